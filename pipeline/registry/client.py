"""The registry client: manifests by tag or digest, HEAD, and blob streams.

One ``RegistryClient`` holds one ``httpx.Client`` (one connection pool) for
every registry it talks to and is safe to share between threads: httpx's
client is, and the auth flow's caches are locked.

What it refuses to trust:
- the transport: HTTPS unless the registry is on loopback (127.0.0.0/8,
  ``::1``, ``localhost``) or the user listed it in ``insecure_hosts``;
- the manifest bytes: read up to ``MANIFEST_MAX_BYTES``, hashed, checked
  against the digest they were asked for and against ``Docker-Content-Digest``;
- redirects, token realms and mirrors: followed (blob storage lives
  elsewhere) but never to a link-local, unspecified or metadata address,
  decided on the resolved address (``registry.addresses``); httpx drops
  ``Authorization`` when one leaves the registry's origin;
- names: registry, repository, tag and digest are validated before they are
  put into a URL.

Errors carry the registry's own error code and message (distribution spec,
"Error Codes") and a ``temporary`` verdict that the retry policy acts on.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from pipeline import __version__
from pipeline.base.digest import Digest, parse_digest
from pipeline.base.escape import escape_text
from pipeline.base.jsontext import loads_bounded
from pipeline.errors import AuthError, BadDigest, DigestMismatch, RegistryError
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import MANIFEST_MAX_BYTES
from pipeline.oci.reference import (
    api_host_for,
    is_loopback_host,
    split_host_port,
    validate_registry,
    validate_repository,
    validate_tag,
)
from pipeline.registry.addresses import Resolver, check_destination
from pipeline.registry.auth import RegistryAuth
from pipeline.registry.bodies import DEFAULT_DEADLINES, Deadlines, RateFloor, read_capped
from pipeline.registry.credentials import LOGIN_HINT, CredentialSource, load_credentials
from pipeline.registry.retry import (
    DEFAULT_RETRY,
    TEMPORARY_STATUSES,
    RetryPolicy,
    header_int,
    parse_retry_after,
    with_retry_after,
)
from pipeline.registry.tls import DeferredTrustContext

__all__ = ["RegistryClient", "ManifestResponse", "ManifestHead", "BlobStream",
           "DEFAULT_TIMEOUT", "USER_AGENT"]

log = structlog.get_logger(__name__)

USER_AGENT = f"rootfs-pipeline/{__version__}"
# Connect quickly or not at all; a read may stall up to 60 s between chunks
# (a busy registry or CDN) before we call the connection dead and retry.
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Error bodies are a few hundred bytes of JSON; do not read more of a misbehaving one.
ERROR_BODY_MAX_BYTES = 64 * 1024
# Blob storage redirects once or twice; more is a loop.
MAX_REDIRECTS = 5


@dataclass(frozen=True, slots=True)
class ManifestResponse:
    """A manifest or index as served, already checked against the digests that name it."""

    body: bytes
    content_type: str
    """Content-Type without parameters, lowercased."""
    digest: Digest
    """The digest of ``body``: the requested one when pulled by digest, else sha256."""


@dataclass(frozen=True, slots=True)
class ManifestHead:
    """What a HEAD says about a manifest, without downloading (or counting) it."""

    digest: Digest | None
    content_type: str
    size: int | None


class BlobStream:
    """An open blob response: ``status`` 200 (whole blob) or 206 (from an offset)."""

    def __init__(self, response: httpx.Response, *, method: str, url: str,
                 deadlines: Deadlines = DEFAULT_DEADLINES) -> None:
        self._response = response
        self._floor = RateFloor(deadlines, method=method, url=url, host=response.url.netloc
                                .decode("ascii", "replace"))
        self._method, self._url = method, url
        self.status = response.status_code
        self.content_range = response.headers.get("content-range")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        self.encoded = encoding not in ("", "identity")
        self.encoding = escape_text(encoding, 60)
        """The Content-Encoding as sent (escaped for messages); meaningful when ``encoded``."""
        self.received = 0

    def chunks(self) -> Iterator[bytes]:
        """The body as sent; a dropped connection or a stall becomes a temporary RegistryError.

        Never decoded: the digest covers the bytes as stored, and a blob sent
        with a Content-Encoding anyway is verified as sent (and so refused
        unless the encoding was a label on the stored bytes).
        """
        try:
            for chunk in self._response.iter_raw():
                self.received += len(chunk)
                self._floor.add(len(chunk))
                yield chunk
        except httpx.TransportError as err:
            raise RegistryError(f"connection lost after {self.received} bytes of the body"
                                f" ({type(err).__name__}: {err})", method=self._method,
                                url=self._url, temporary=True) from None


class RegistryClient:
    """Talks to OCI/Docker registries; use as a context manager, share between threads."""

    def __init__(self, *, credentials: CredentialSource | None = None,
                 insecure_hosts: frozenset[str] = frozenset(),
                 retry: RetryPolicy = DEFAULT_RETRY,
                 transport: httpx.BaseTransport | None = None,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
                 user_agent: str = USER_AGENT,
                 resolve: Resolver = socket.getaddrinfo,
                 deadlines: Deadlines = DEFAULT_DEADLINES) -> None:
        """``credentials=None`` reads Docker's config.json ($DOCKER_CONFIG or ~/.docker)."""
        self.retry = retry
        self.deadlines = deadlines
        self.insecure_hosts = frozenset(insecure_hosts)
        self._http = httpx.Client(
            # Verifies as httpx's default does, loading the CA bundle only for a TLS registry.
            verify=DeferredTrustContext.create(), transport=transport, timeout=timeout,
            follow_redirects=True, max_redirects=MAX_REDIRECTS,
            # Nothing we read needs compressing, and an encoded body is one
            # more thing to bound: ask for every body as stored.
            headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
            event_hooks={"request": [_destination_guard(resolve)]})
        self._auth = RegistryAuth(
            load_credentials() if credentials is None else credentials,
            send=lambda request: self._http.send(request, auth=None, follow_redirects=False,
                                                 stream=True), deadlines=deadlines)

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # URLs -------------------------------------------------------------------

    def scheme(self, registry: str) -> str:
        """``http`` for loopback and opted-in insecure registries, else ``https``."""
        host, _ = split_host_port(api_host_for(registry))
        insecure = {registry, api_host_for(registry), host} & self.insecure_hosts
        return "http" if insecure or is_loopback_host(host) else "https"

    def url(self, registry: str, repository: str, kind: str, reference: str | Digest) -> str:
        """``<scheme>://<api host>/v2/<repository>/<kind>/<reference>``, every part validated."""
        registry = validate_registry(registry)
        validate_repository(repository)
        if kind not in ("manifests", "blobs"):
            raise ValueError(f"internal error: unknown endpoint kind {kind!r}")
        if not isinstance(reference, Digest):
            reference = validate_tag(reference) if ":" not in reference else parse_digest(reference)
        return f"{self.scheme(registry)}://{api_host_for(registry)}/v2/{repository}/{kind}/{reference}"

    # Manifests --------------------------------------------------------------

    def get_manifest(self, registry: str, repository: str,
                     reference: str | Digest) -> ManifestResponse:
        """GET a manifest or index by tag or digest, with retries; verify its digest."""
        url = self.url(registry, repository, "manifests", reference)
        return self.retry.run(lambda: self._get_manifest_once(url, reference))

    def head_manifest(self, registry: str, repository: str,
                      reference: str | Digest) -> ManifestHead:
        """HEAD a manifest: its digest without a pull (Docker Hub does not count HEADs)."""
        url = self.url(registry, repository, "manifests", reference)

        def once() -> ManifestHead:
            with self._open("HEAD", url, {"Accept": mt.MANIFEST_ACCEPT}) as response:
                header = response.headers.get("docker-content-digest")
                length = response.headers.get("content-length")
                return ManifestHead(
                    _header_digest(header, "HEAD", url) if header else None,
                    mt.base_type(response.headers.get("content-type")),
                    header_int(length))

        return self.retry.run(once)

    def _get_manifest_once(self, url: str, reference: str | Digest) -> ManifestResponse:
        with self._open("GET", url, {"Accept": mt.MANIFEST_ACCEPT}) as response:
            length = response.headers.get("content-length")
            declared = header_int(length)
            if declared is not None and declared > MANIFEST_MAX_BYTES:
                raise RegistryError(f"manifest is {length} bytes, more than the"
                                    f" {MANIFEST_MAX_BYTES} byte limit", method="GET", url=url)
            body = self._read_body(response, MANIFEST_MAX_BYTES, "GET", url, what="manifest")
            header = response.headers.get("docker-content-digest")
            content_type = mt.base_type(response.headers.get("content-type"))
        pinned = reference if isinstance(reference, Digest) else (
            parse_digest(reference) if ":" in reference else None)
        algorithm = pinned.algorithm if pinned else "sha256"
        digest = Digest(algorithm, hashlib.new(algorithm, body).hexdigest())
        if pinned is not None and digest != pinned:
            raise DigestMismatch(f"GET {url}: manifest", str(pinned), str(digest))
        if header:
            claimed = _header_digest(header, "GET", url)
            actual = Digest(claimed.algorithm, hashlib.new(claimed.algorithm, body).hexdigest())
            if actual != claimed:
                raise DigestMismatch(f"GET {url}: manifest vs. Docker-Content-Digest",
                                     str(claimed), str(actual))
        return ManifestResponse(body, content_type, digest)

    # Blobs ------------------------------------------------------------------

    @contextlib.contextmanager
    def open_blob(self, registry: str, repository: str, digest: Digest, *,
                  offset: int = 0) -> Iterator[BlobStream]:
        """One GET of a blob, from ``offset`` with a Range header; no retries here.

        The caller (BlobCache) owns retries because only it knows how many
        bytes it already has and can resume.
        """
        if not isinstance(digest, Digest):
            raise TypeError(f"internal error: open_blob wants a Digest, got {digest!r}")
        url = self.url(registry, repository, "blobs", digest)
        # Hash what the digest covers: ask for the bytes as stored, not re-encoded.
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        with self._open("GET", url, headers) as response:
            yield BlobStream(response, method="GET", url=url, deadlines=self.deadlines)

    # Plumbing ---------------------------------------------------------------

    @contextlib.contextmanager
    def send(self, method: str, url: str, headers: dict[str, str], *,
             content: bytes | Iterable[bytes] | None = None,
             ok: tuple[int, ...] = (200, 206)) -> Iterator[httpx.Response]:
        """One authenticated request with a body (push.py); any status not in ``ok`` raises."""
        with self._open(method, url, headers, content=content, ok=ok) as response:
            yield response

    @contextlib.contextmanager
    def _open(self, method: str, url: str, headers: dict[str, str], *,
              content: bytes | Iterable[bytes] | None = None,
              ok: tuple[int, ...] = (200, 206)) -> Iterator[httpx.Response]:
        request = self._http.build_request(method, url, headers=headers, content=content)
        try:
            response = self._http.send(request, auth=self._auth, stream=True)
        except httpx.TooManyRedirects:
            raise RegistryError(f"more than {MAX_REDIRECTS} redirects", method=method,
                                url=url) from None
        except httpx.TransportError as err:
            raise RegistryError(f"{type(err).__name__}: {err or 'connection failed'}",
                                method=method, url=url, temporary=True) from None
        try:
            if response.status_code not in ok:
                raise self._error(response, method, url)
            yield response
        finally:
            response.close()

    def _read_body(self, response: httpx.Response, limit: int, method: str, url: str, *,
                   what: str, truncate: bool = False) -> bytes:
        try:
            return read_capped(response.iter_raw(), response.headers.get("content-encoding", ""),
                               limit, method=method, url=url, what=what,
                               host=response.url.netloc.decode("ascii", "replace"),
                               deadlines=self.deadlines, truncate=truncate)
        except httpx.TransportError as err:
            raise RegistryError(f"connection lost while reading the {what}"
                                f" ({type(err).__name__})", method=method, url=url,
                                temporary=True) from None

    def _error(self, response: httpx.Response, method: str, url: str) -> RegistryError:
        status = response.status_code
        body, unread = b"", ""
        if method != "HEAD":
            try:
                body = self._read_body(response, ERROR_BODY_MAX_BYTES, method, url,
                                       what="error body", truncate=True)
            except RegistryError as err:
                # A stalled or dropped error body is worth naming: it is what was slow.
                if err.temporary:
                    unread = ", and " + str(err).removeprefix(f"{method} {url}: ")
        code, detail = _registry_diagnostic(body)
        said = f"{status} {escape_text(response.reason_phrase, 60)}" + (
            f" ({code}: {detail})" if code else "")
        registry = url.split("/", 3)[2]
        final = response.request.url
        if final.netloc.decode("ascii") != registry:
            # A redirect target (blob storage) answered, not the registry: our
            # credentials were rightly never sent there, so do not blame them.
            where = str(final.copy_with(query=None, fragment=None))
            return RegistryError(f"{said} from {where}, where the registry redirected us; the"
                                 " registry's storage refused the request, try again later or"
                                 " report it to the registry", method=method, url=url,
                                 status=status, code=code,
                                 temporary=status in TEMPORARY_STATUSES)
        if status == 401:
            configured = self._auth.has_credentials(_registry_name(registry))
            hint = (f"the registry refused the configured credentials; run {LOGIN_HINT}"
                    f" for {registry} again" if configured else
                    f"the registry needs credentials and none are configured for {registry};"
                    f" run {LOGIN_HINT}")
            return AuthError(f"{said}: {hint}", method=method, url=url, status=status, code=code)
        if status == 403:
            return AuthError(f"{said}: access denied; check that your account may pull this"
                             " repository", method=method, url=url, status=status, code=code)
        if status == 404:
            return RegistryError(f"{said}: not found; check the repository name and the tag"
                                 " or digest", method=method, url=url, status=status, code=code)
        temporary = status in TEMPORARY_STATUSES
        # No "will retry" here: the retry policy logs each retry and says when it gave up.
        error = RegistryError(said + unread, method=method, url=url, status=status, code=code,
                              temporary=temporary)
        return with_retry_after(error, parse_retry_after(response.headers.get("retry-after")))


def _registry_name(api_host: str) -> str:
    return "docker.io" if api_host == api_host_for("docker.io") else api_host


def _destination_guard(resolve: Resolver) -> Callable[[httpx.Request], None]:
    """Event hook on every request, redirects and token requests included."""

    def hook(request: httpx.Request) -> None:
        check_destination(request.url.host, method=request.method,
                          url=str(request.url.copy_with(query=None)), resolve=resolve)

    return hook


def _header_digest(value: str, method: str, url: str) -> Digest:
    try:
        return parse_digest(value.strip())
    except BadDigest as err:
        raise RegistryError(f"invalid Docker-Content-Digest header: {err.reason}",
                            method=method, url=url) from None


def _registry_diagnostic(body: bytes) -> tuple[str | None, str]:
    """The first (code, message) of a distribution-spec errors body, if there is one."""
    try:
        doc: Any = loads_bounded(body)
        first = doc["errors"][0]
        code, message = first.get("code"), first.get("message", "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, ""
    if not isinstance(code, str):
        return None, ""
    text = message if isinstance(message, str) else ""
    # Printed on the user's terminal: no ESC, BEL or newline from a registry.
    return escape_text(code, 64), escape_text(text, 300)
