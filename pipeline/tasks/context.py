"""What every task of one run shares: manifest, cache paths, registry clients.

A ``RunContext`` is built once per doit process (when the dodo file loads)
and handed to every action. Nothing in it touches the network until an
action asks for a client, so ``doit list``, ``info``, ``clean`` and a no-op
run never open a connection; the registry client (and httpx) is not even
imported until then.

Mirrors: for a registry with mirrors (images.toml or ``ROOTFS_MIRRORS``),
``sources`` lists each mirror first, then the registry itself. Mirrors are
asked through a client that does not retry (``MIRROR_ATTEMPTS``): a mirror
that fails once is skipped at once, with one log line, and the next source (in the
end the registry, with full retries) is asked instead.
Whoever serves the bytes, every digest is verified by the registry client
and the blob cache; a mirror is trusted for nothing but availability.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from pipeline.base.terminal import Terminal, TransferProgress
from pipeline.errors import DigestMismatch, RegistryError
from pipeline.project.config import Manifest
from pipeline.registry.blobcache import BlobCache

if TYPE_CHECKING:  # imported on first use: a no-op run never loads httpx or multiprocessing
    from pipeline.oci.reference import ImageRef
    from pipeline.registry.client import RegistryClient
    from pipeline.tasks.workers import WorkerPool

__all__ = ["RunContext", "CacheGuard", "Source", "MIRROR_ATTEMPTS", "MIRROR_TIMEOUT_S",
           "MIRROR_CONNECT_TIMEOUT_S"]

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


class CacheGuard:
    """Many build steps at once, or one garbage collection alone (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(slots=True, eq=False)
class RunContext:
    manifest: Manifest
    terminal: Terminal
    frozen: bool = False
    progress: TransferProgress = field(init=False)
    guard: CacheGuard = field(default_factory=CacheGuard)
    client_factory: Callable[..., RegistryClient] = _registry_client
    log_mode: str = "json"
    log_level: str = "info"
    """The log format of this run, for worker processes to log like the parent."""
    _clients: dict[str, RegistryClient] = field(default_factory=dict)
    _clients_lock: threading.Lock = field(default_factory=threading.Lock)
    _chain_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _workers: WorkerPool | None = None
    _jobs_here: int = 0

    def __post_init__(self) -> None:
        self.progress = TransferProgress(self.terminal)

    # Paths ------------------------------------------------------------------

    @property
    def cache_dir(self) -> Path:
        return self.manifest.settings.cache_dir

    @property
    def output_dir(self) -> Path:
        return self.manifest.settings.output_dir

    @property
    def lock_path(self) -> Path:
        return self.manifest.lock_path

    @property
    def blobs(self) -> BlobCache:
        return BlobCache(self.cache_dir / "blobs")

    @property
    def layers_root(self) -> Path:
        return self.cache_dir / "layers"

    @property
    def flat_root(self) -> Path:
        return self.cache_dir / "flat"

    @property
    def base_root(self) -> Path:
        """Base images of derived ext4 builds (``ext4base``)."""
        return self.cache_dir / "base"

    def chain_lock(self, key: str) -> threading.Lock:
        """One flatten per chain at a time: two images may share the same layers."""
        with self._clients_lock:
            return self._chain_locks.setdefault(key, threading.Lock())

    # Registries -------------------------------------------------------------

    def client(self, *, mirror: bool = False) -> RegistryClient:
        """The shared client (created on first use): thread-safe, one pool for all hosts."""
        kind = "mirror" if mirror else "upstream"
        with self._clients_lock:
            found = self._clients.get(kind)
            if found is None:
                options: dict[str, object] = {"insecure_hosts": self.manifest.insecure_hosts}
                if mirror:
                    options.update(_mirror_options())
                found = self._clients[kind] = self.client_factory(**options)
            return found

    def sources(self, registry: str, repository: str) -> list[Source]:
        """Mirrors of ``registry`` in order, then the registry itself."""
        found = [Source(m, repository, mirror_of=registry)
                 for m in self.manifest.mirrors_for(registry)]
        return found + [Source(registry, repository)]

    def from_sources(self, sources: list[Source], what: str,
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
                log.warning("source failed, trying the next", what=what, source=str(source),
                            next=str(sources[position + 1]), error=str(err))
        raise AssertionError("internal error: unreachable")

    # Worker processes ---------------------------------------------------------

    def run_job(self, job: Callable[..., T], *args: Any) -> T:
        """``job(*args)`` (a ``workers`` job), where it gets a core of its own.

        The first job runs right here: alone, it has nothing to take turns
        with, and a run that builds one image never starts a pool (a fifth of
        a second and ~60 MB). A job that arrives while another runs here goes
        to a worker process, so the two use both cores instead of one GIL.
        """
        from pipeline.tasks.workers import WorkerPool, pool_size

        size = pool_size(self.manifest.settings.jobs)
        with self._clients_lock:
            here = size < 2 or not self._jobs_here
            if here:
                self._jobs_here += 1
            elif self._workers is None:
                # doit's console script is __main__, and multiprocessing runs __main__
                # again in every worker: with doit imported in the server, that is free.
                self._workers = WorkerPool(size, log_mode=self.log_mode,
                                           log_level=self.log_level, preload=["doit"])
            workers = self._workers
        if not here:
            assert workers is not None
            return workers.run(job, *args)
        try:
            return job(*args)
        finally:
            with self._clients_lock:
                self._jobs_here -= 1

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.close()
