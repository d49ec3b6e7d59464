"""Where content is asked for: mirrors first, then the registry, through shared clients.

``RegistrySources`` is built once per run. Nothing in it touches the network
until a step asks for a client, so ``doit list``, ``info``, ``clean`` and a
no-op run never open a connection; the registry client (and httpx) is not
even imported until then.

Mirrors: for a registry with mirrors (images.toml or ``ROOTFS_MIRRORS``),
``sources`` lists each mirror first, then the registry itself. Mirrors are
asked through a client that does not retry (``MIRROR_ATTEMPTS``): a mirror
that fails once is skipped at once, with one log line, and the next source
(in the end the registry, with full retries) is asked instead. Whoever
serves the bytes, every digest is verified by the registry client and the
blob cache; a mirror is trusted for nothing but availability.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from pipeline.errors import DigestMismatch, RegistryError

if TYPE_CHECKING:  # imported on first use: a no-op run never loads httpx
    from pipeline.oci.reference import ImageRef
    from pipeline.registry.client import RegistryClient

__all__ = ["RegistrySources", "Source", "MIRROR_ATTEMPTS", "MIRROR_TIMEOUT_S",
           "MIRROR_CONNECT_TIMEOUT_S", "FALLBACK_ERRORS"]

log = structlog.get_logger(__name__)

T = TypeVar("T")
# One try: the fallback is the retry. A dead or overloaded mirror costs one
# failed request (and one log line), never a backoff, before the next source.
MIRROR_ATTEMPTS = 1
# A mirror on the CI's own network answers a connect in milliseconds; one that
# does not within this is treated as down rather than waited for (the
# registry client's default is 10 s). Reads may stall as long as upstream's.
MIRROR_CONNECT_TIMEOUT_S = 3.0
MIRROR_TIMEOUT_S = 60.0
# What a failing source may raise that the next source can cure. Anything
# else (a malformed image, a refused platform) is the image's own fault.
FALLBACK_ERRORS = (RegistryError, DigestMismatch)


def _registry_client(**options: Any) -> RegistryClient:
    from pipeline.registry.client import RegistryClient

    return RegistryClient(**options)


def _mirror_options() -> dict[str, Any]:
    import httpx

    from pipeline.registry.retry import RetryPolicy

    return {"retry": RetryPolicy(attempts=MIRROR_ATTEMPTS),
            "timeout": httpx.Timeout(MIRROR_TIMEOUT_S, connect=MIRROR_CONNECT_TIMEOUT_S)}


@dataclass(frozen=True, slots=True)
class Source:
    """One place to ask for content: a registry (or mirror) host and a repository."""

    registry: str
    repository: str
    mirror_of: str | None = None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"

    def ask_for(self, ref: ImageRef) -> ImageRef:
        """``ref`` as this source serves it: a mirror under its own host."""
        return ref.with_registry(self.registry) if self.mirror_of else ref


@dataclass(slots=True, eq=False)
class RegistrySources:
    """The run's registry clients (one for upstreams, one for mirrors) and its mirrors."""

    mirrors: Mapping[str, Sequence[str]] = field(default_factory=dict)
    """Registry host -> its mirrors, in the order they are tried."""
    insecure_hosts: frozenset[str] = frozenset()
    client_factory: Callable[..., RegistryClient] = _registry_client
    _clients: dict[str, RegistryClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def client(self, *, mirror: bool = False) -> RegistryClient:
        """The shared client (created on first use): thread-safe, one pool for all hosts."""
        kind = "mirror" if mirror else "upstream"
        with self._lock:
            found = self._clients.get(kind)
            if found is None:
                options: dict[str, object] = {"insecure_hosts": self.insecure_hosts}
                if mirror:
                    options.update(_mirror_options())
                found = self._clients[kind] = self.client_factory(**options)
            return found

    def sources(self, registry: str, repository: str) -> list[Source]:
        """Mirrors of ``registry`` in order, then the registry itself."""
        found = [Source(m, repository, mirror_of=registry)
                 for m in self.mirrors.get(registry, ())]
        return found + [Source(registry, repository)]

    def first_success(self, sources: Sequence[Source], what: str,
                      attempt: Callable[[RegistryClient, Source], T]) -> T:
        """``attempt`` on each source until one works; one log line per fallback."""
        if not sources:
            raise AssertionError(f"internal error: no source for {what}")
        for position, source in enumerate(sources):
            try:
                return attempt(self.client(mirror=source.mirror_of is not None), source)
            except FALLBACK_ERRORS as err:
                if position == len(sources) - 1:
                    raise
                log.warning("source.fallback", what=what, source=str(source),
                            next=str(sources[position + 1]), error=str(err))
        raise AssertionError("internal error: unreachable")

    def close(self) -> None:
        with self._lock:
            clients = list(self._clients.values())
            self._clients.clear()
        for client in clients:
            client.close()
