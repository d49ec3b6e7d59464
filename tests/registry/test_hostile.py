"""A hostile registry (tests/harness/hostileserver.py on 127.0.0.1) against the real client.

Each row scripts what the server sends and asserts the one error line the
user sees. Memory is measured with tracemalloc: a few KB of gzip must not
become megabytes in memory. Deadlines are shortened (``FAST``) so slow
bodies take a second, not a minute; retries do not sleep.
"""

from __future__ import annotations

import gzip
import hashlib
import socket
import tempfile
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.base.digest import parse_digest
from pipeline.errors import AuthError, PipelineError, RegistryError
from pipeline.oci import mediatypes as mt
from pipeline.registry.blobcache import BlobCache
from pipeline.registry.bodies import Deadlines
from pipeline.registry.client import RegistryClient
from pipeline.registry.credentials import NoCredentials
from pipeline.registry.retry import RetryPolicy
from pipeline.registry.sources import RegistrySources
from tests.harness.hostileserver import HostileServer, Script

FAST = Deadlines(body_s=1.0, blob_min_bytes_per_s=1000.0, blob_window_s=1.0)
BOMB_BYTES = 64 * 1024 * 1024
# 64 MiB of zeros compress to ~64 KB of gzip: sixteen times the manifest cap.
GZIP_BOMB = gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)
DEFLATE_BOMB = zlib.compress(b"\0" * BOMB_BYTES, 9)
# Reading must never hold more than this at once (the caps are 1-4 MiB).
PEAK_BYTES = 24 * 1024 * 1024
REPO = "hostile/repo"
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
BLOB = b"blob bytes " * 100
BLOB_DIGEST = parse_digest("sha256:" + hashlib.sha256(BLOB).hexdigest())
OCI = b"Content-Type: " + mt.OCI_MANIFEST.encode()

FakeResolver = Callable[..., Sequence[tuple[Any, ...]]]


def fake_resolver(names: dict[str, str]) -> FakeResolver:
    """getaddrinfo for made-up names (never sent to DNS); other hosts resolve for real."""

    def resolve(host: str, port: object, *args: Any, **kwargs: Any) -> Sequence[tuple[Any, ...]]:
        if host in names:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], 0))]
        return socket.getaddrinfo(host, port, *args, **kwargs)

    return resolve


@pytest.fixture
def server() -> Iterator[HostileServer]:
    with HostileServer() as s:
        yield s


def make(resolve: FakeResolver | None = None) -> RegistryClient:
    options: dict[str, Any] = {} if resolve is None else {"resolve": resolve}
    return RegistryClient(credentials=NoCredentials(), deadlines=FAST,
                          retry=RetryPolicy(attempts=2, sleep=lambda _: None,
                                            jitter=lambda: 0.0), **options)


def get_manifest(client: RegistryClient, server: HostileServer) -> object:
    return client.get_manifest(server.host, REPO, "v1")


def fetch_blob(client: RegistryClient, server: HostileServer) -> object:
    """The real path: BlobCache.fetch (retries, resume, verification); the size it kept."""
    with tempfile.TemporaryDirectory() as root:
        path = BlobCache(Path(root)).fetch(client, server.host, REPO, BLOB_DIGEST, len(BLOB))
        return path.stat().st_size


def head_size(client: RegistryClient, server: HostileServer) -> object:
    return client.head_manifest(server.host, REPO, "v1").size


@dataclass(frozen=True)
class Case:
    id: str
    scripts: tuple[tuple[str, Script], ...]
    call: Callable[[RegistryClient, HostileServer], object]
    error: type[PipelineError] | None
    message: str
    """The error's whole message with {host} for the server, or the expected result."""
    names: tuple[tuple[str, str], ...] = ()


def bomb(status: int, body: bytes, coding: bytes, *extra: bytes) -> Script:
    return Script.simple(status, body, b"Content-Encoding: " + coding, *extra)


def challenge(realm: str) -> Script:
    header = f'WWW-Authenticate: Bearer realm="{realm}",service="s"'.encode("latin-1")
    return Script.simple(401, b"{}", header)


M = "GET http://{host}/v2/hostile/repo/manifests/v1"
B = f"GET http://{{host}}/v2/hostile/repo/blobs/{BLOB_DIGEST}"

CASES = [
    # Content-Encoding: caps apply after decoding, while decoding.
    Case("manifest-gzip-bomb", (("/manifests/", bomb(200, GZIP_BOMB, b"gzip", OCI)),),
         get_manifest, RegistryError,
         M + ": manifest is larger than the 4194304 byte limit (counted after decoding)"),
    Case("manifest-deflate-bomb", (("/manifests/", bomb(200, DEFLATE_BOMB, b"deflate", OCI)),),
         get_manifest, RegistryError,
         M + ": manifest is larger than the 4194304 byte limit (counted after decoding)"),
    Case("error-body-gzip-bomb", (("/manifests/", bomb(404, GZIP_BOMB, b"gzip")),),
         get_manifest, RegistryError,
         M + ": 404 X: not found; check the repository name and the tag or digest"),
    Case("token-answer-gzip-bomb", (("/manifests/", challenge("http://{host}/token")),
                                    ("/token", bomb(200, GZIP_BOMB, b"gzip"))),
         get_manifest, AuthError,
         "token server http://{host}/token: token answer is larger than the 1048576 byte"
         " limit (counted after decoding)"),
    Case("manifest-brotli", (("/manifests/", bomb(200, b"\x0b\x02\x80", b"br", OCI)),),
         get_manifest, RegistryError,
         M + ": the response has Content-Encoding 'br', which we did not ask for and do not"
         " decode (only gzip and deflate)"),
    Case("manifest-zstd", (("/manifests/", bomb(200, b"\x28\xb5\x2f\xfd" + b"\0" * 16, b"zstd",
                                             OCI)),),
         get_manifest, RegistryError,
         M + ": the response has Content-Encoding 'zstd', which we did not ask for and do not"
         " decode (only gzip and deflate)"),
    Case("manifest-gzip-honest", (("/manifests/", bomb(200, gzip.compress(MANIFEST), b"gzip",
                                                         OCI)),),
         lambda c, s: c.get_manifest(s.host, REPO, "v1").body, None, MANIFEST.decode()),
    Case("blob-encoded-anyway", (("/blobs/", bomb(200, gzip.compress(BLOB), b"gzip")),),
         fetch_blob, RegistryError,
         f"blob {BLOB_DIGEST} from {{host}}/{REPO}: sent with Content-Encoding 'gzip' although"
         f" we asked for identity, and the bytes as sent are not the blob (RATE bytes, not"
         f" {len(BLOB)}); refusing it without retrying (the registry encodes it on the way),"
         " report it to the registry"),
    Case("blob-encoded-anyway-longer", (("/blobs/", bomb(200, BLOB * 2, b"x-gzip")),),
         fetch_blob, RegistryError,
         f"blob {BLOB_DIGEST} from {{host}}/{REPO}: sent with Content-Encoding 'x-gzip'"
         f" although we asked for identity, and the bytes as sent are not the blob (more than"
         f" {len(BLOB)} bytes); refusing it"),
    Case("blob-encoded-anyway-same-size", (("/blobs/", bomb(200, BLOB.upper(), b"br")),),
         fetch_blob, RegistryError,
         f"blob {BLOB_DIGEST} from {{host}}/{REPO}: sent with Content-Encoding 'br' although"
         " we asked for identity, and the bytes as sent are not the blob (sha256:RATE); refusing"
         " it without retrying (the registry encodes it on the way), report it to the"
         " registry"),
    Case("blob-label-on-stored-bytes", (("/blobs/", bomb(200, BLOB, b"gzip")),),
         fetch_blob, None, str(len(BLOB))),
    # Deadlines: a trickle hits the overall deadline (after the retry).
    Case("manifest-trickle", (("/manifests/", Script.trickle(40, every_s=0.1)),),
         get_manifest, RegistryError,
         M + ": {host} took more than 1 s to send the manifest (RATE; gave up after 2 attempts"),
    Case("error-body-trickle", (("/manifests/", Script.trickle(40, every_s=0.1, status=500)),),
         get_manifest, RegistryError, M + ": 500 X, and {host} took more than 1 s to send the"
         " error body (RATE; gave up after 2 attempts"),
    Case("token-answer-trickle", (("/manifests/", challenge("http://{host}/token")),
                                  ("/token", Script.trickle(40, every_s=0.1))),
         get_manifest, AuthError,
         "token server http://{host}/token: {host} took more than 1 s to send the token answer"
         " (RATE; gave up after 2 attempts"),
    Case("blob-below-rate-floor", (("/blobs/", Script.trickle(30, every_s=0.1)),),
         fetch_blob, RegistryError,
         B + ": {host} sent the blob at RATE; gave up after 2 attempts"),
    # Malformed headers: absent or a failed attempt, never a traceback.
    Case("content-length-superscript", (("/manifests/", Script.simple(
        200, b"", b"Content-Length: \xc2\xb2", OCI, length=False)),),
         head_size, RegistryError, M.replace("GET", "HEAD") + ": RemoteProtocolError"),
    Case("retry-after-superscript", (("/manifests/", Script.simple(
        503, b"", b"Retry-After: \xc2\xb2")),), get_manifest, RegistryError,
         M + ": 503 X; gave up after 2 attempts"),
    Case("retry-after-year-99999", (("/manifests/", Script.simple(
        503, b"", b"Retry-After: Mon, 01 Jan 99999 00:00:00 GMT")),), get_manifest,
         RegistryError, M + ": 503 X; gave up after 2 attempts"),
    Case("retry-after-40-digits", (("/manifests/", Script.simple(
        429, b"", b"Retry-After: " + b"9" * 40)),), get_manifest,
         RegistryError, M + ": 429 X; gave up after 2 attempts"),
    Case("location-non-ascii", (("/manifests/", Script.simple(
        307, b"", b"Location: http://\xff\xfe/\x1b[2J")),), get_manifest,
         RegistryError, M + ": RemoteProtocolError"),
    Case("www-authenticate-non-ascii-realm", (("/manifests/", challenge("http://\xe9\x07/t")),),
         get_manifest, AuthError, "127.0.0.1:{port} sent a Bearer challenge with realm"),
    Case("www-authenticate-nonsense", (("/manifests/", Script.simple(
        401, b"", b"WWW-Authenticate: ,,,=\"\"\"===Bearer")),), get_manifest, AuthError,
         M + ": 401 X: the registry needs credentials and none are configured"),
    # Addresses: decided on the resolved address (made-up names, never connected to).
    Case("redirect-decimal", (("/manifests/", Script.simple(
        307, b"", b"Location: http://2852039166/latest")),), get_manifest, RegistryError,
         "GET http://2852039166/latest: refusing a request to 2852039166 (169.254.169.254), a"
         " link-local, unspecified or cloud metadata address"),
    Case("redirect-hex", (("/manifests/", Script.simple(
        307, b"", b"Location: http://0xa9fea9fe/latest")),), get_manifest, RegistryError,
         "GET http://0xa9fea9fe/latest: refusing a request to 0xa9fea9fe (169.254.169.254)"),
    Case("redirect-short-form", (("/manifests/", Script.simple(
        307, b"", b"Location: http://169.254.43518/latest")),), get_manifest, RegistryError,
         "GET http://169.254.43518/latest: refusing a request to 169.254.43518"
         " (169.254.169.254)"),
    Case("redirect-ipv4-mapped", (("/manifests/", Script.simple(
        307, b"", b"Location: http://[::ffff:169.254.169.254]/latest")),), get_manifest,
         RegistryError, "GET http://[::ffff:169.254.169.254]/latest: refusing a request to"
         " ::ffff:169.254.169.254 (169.254.169.254)"),
    Case("redirect-zero", (("/manifests/", Script.simple(
        307, b"", b"Location: http://0:8080/latest")),), get_manifest, RegistryError,
         "GET http://0:8080/latest: refusing a request to 0 (0.0.0.0)"),
    Case("redirect-name-resolving-to-metadata", (("/manifests/", Script.simple(
        307, b"", b"Location: http://metadata.hostile.test/latest")),), get_manifest,
         RegistryError, "GET http://metadata.hostile.test/latest: refusing a request to"
         " metadata.hostile.test (169.254.169.254)",
         names=(("metadata.hostile.test", "169.254.169.254"),)),
    Case("realm-name-resolving-to-metadata", (("/manifests/", challenge(
        "http://realm.hostile.test/token")),), get_manifest, RegistryError,
         "GET http://realm.hostile.test/token: refusing a request to realm.hostile.test"
         " (169.254.169.254)", names=(("realm.hostile.test", "169.254.169.254"),)),
    # Text from outside: no ESC, BEL or newline reaches the message.
    Case("error-message-with-escapes", (("/manifests/", Script.simple(
        400, b'{"errors":[{"code":"DENIED\\u001b[31m","message":"no\\u0007\\nFAILED: fake'
        b'\\u001b]0;pwned\\u0007"}]}')),), get_manifest, RegistryError,
         M + ": 400 X (DENIED\\x1b[31m: no\\x07\\nFAILED: fake\\x1b]0;pwned\\x07)"),
    Case("reason-phrase-with-escapes", (("/manifests/", Script(
        b"404 \x1b[2Jgone\x07", (b"Content-Length: 0",))),), get_manifest, RegistryError,
         M + ": 404 \\x1b[2Jgone\\x07: not found"),
    # Nesting: a deep error body or token answer is no RecursionError.
    Case("error-body-deeply-nested", (("/manifests/", Script.simple(
        400, b'{"errors":' + b"[" * 100_000)),), get_manifest, RegistryError, M + ": 400 X"),
    Case("token-answer-deeply-nested", (("/manifests/", challenge("http://{host}/token")),
                                        ("/token", Script.simple(200, b"[" * 100_000))),
         get_manifest, AuthError, "token server http://{host}/token answered for {host} with"
         " something that is not a JSON object"),
]


# Waiting out a deadline takes a second or two per try: kept out of the fast loop.
TIMED = {"manifest-trickle", "error-body-trickle", "token-answer-trickle",
         "blob-below-rate-floor"}


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.id in TIMED else []) for c in CASES])
def test_hostile_registry(server: HostileServer, case: Case) -> None:
    for path, script in case.scripts:
        if script.headers and b"{host}" in b"".join(script.headers):
            script = Script(script.status, tuple(h.replace(b"{host}", server.host.encode())
                                                 for h in script.headers), script.body)
        server.add(path, script)
    expected = case.message.replace("{host}", server.host).replace("{port}", str(server.port))
    resolve = fake_resolver(dict(case.names)) if case.names else None
    tracemalloc.start()
    try:
        with make(resolve) as client:
            if case.error is None:
                result = case.call(client, server)
                shown = result.decode() if isinstance(result, bytes) else str(result)
                assert shown == expected
                return
            with pytest.raises(case.error) as caught:
                case.call(client, server)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(caught.value)
    # RATE stands for a figure that varies (a rate, a count, a digest).
    prefix, _, suffix = expected.partition("RATE")
    assert message.startswith(prefix), message
    assert message.endswith(suffix), message
    assert not any(ch in message for ch in "\x1b\x07\n\r"), message
    assert peak < PEAK_BYTES, f"{peak} bytes in memory at once"
    if case.names:  # the made-up address was never asked for
        assert all("hostile.test" not in head for head in server.heads)


def test_a_blob_encoded_on_the_way_is_refused_on_the_first_answer(server: HostileServer) -> None:
    """The server will not change its mind: no retry, no resume with Range."""
    server.add("/blobs/", bomb(200, gzip.compress(BLOB), b"gzip"))
    with make() as client, pytest.raises(RegistryError) as caught:
        fetch_blob(client, server)
    assert not caught.value.temporary
    assert len(server.heads) == 1, server.heads
    assert "Accept-Encoding: identity" in server.heads[0]


@pytest.mark.parametrize("mirror, shown, address", [
    ("2852039166:5000", "2852039166", "169.254.169.254"),
    ("0xa9fea9fe:5000", "0xa9fea9fe", "169.254.169.254"),
    ("169.254.43518:5000", "169.254.43518", "169.254.169.254"),
    ("[::ffff:169.254.169.254]:5000", "::ffff:169.254.169.254", "169.254.169.254"),
    ("0:5000", "0", "0.0.0.0"),
    ("169.254.169.254", "169.254.169.254", "169.254.169.254"),
], ids=["decimal", "hex", "short-form", "ipv4-mapped", "zero", "plain"])
def test_a_mirror_at_a_metadata_address_is_refused_in_every_spelling(
        server: HostileServer, mirror: str, shown: str, address: str) -> None:
    """Decided on the resolved address, as for redirects and token realms."""
    server.add("/manifests/", Script.simple(200, MANIFEST, OCI))
    sources = RegistrySources(
        mirrors={server.host: [mirror]}, mirrors_only=frozenset({server.host}),
        client_factory=lambda **options: RegistryClient(credentials=NoCredentials(), **options))
    try:
        with pytest.raises(RegistryError) as caught:
            sources.first_success(sources.sources(server.host, REPO), "the manifest",
                                  lambda client, source: client.get_manifest(
                                      source.registry, source.repository, "v1"))
    finally:
        sources.close()
    assert str(caught.value) == (
        f"GET https://{mirror}/v2/{REPO}/manifests/v1: refusing a request to {shown}"
        + (f" ({address})" if shown != address else "") + ", a link-local, unspecified or"
        " cloud metadata address (a redirect, token realm or mirror pointing there); fix the"
        " registry or mirror setting, or report the registry")
    assert server.heads == []  # the registry itself is mirrors-only: nothing reached it
