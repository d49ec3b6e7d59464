"""The registry client's TLS context: verifies like httpx's default, loads trust only for TLS."""

from __future__ import annotations

import datetime
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import certifi
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from pipeline.registry.client import RegistryClient
from pipeline.registry.credentials import NoCredentials
from pipeline.registry.tls import DeferredTrustContext, trust_locations
from tests.harness.images import file, make_image, make_layer
from tests.harness.push import push
from tests.harness.registry import Registry


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "5")
        self.end_headers()
        self.wfile.write(b"hello")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for the name localhost only: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture(scope="module")
def tls_server(certificate: tuple[Path, Path]) -> Iterator[str]:
    """An HTTPS server on loopback answering every GET with ``hello``; its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*map(str, certificate))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_new_context_trusts_nothing_and_verifies() -> None:
    ctx = DeferredTrustContext.create(environ={})
    assert ctx.cert_store_stats()["x509"] == 0 and not ctx.trust_loaded
    assert ctx.check_hostname and ctx.verify_mode == ssl.CERT_REQUIRED


def test_trust_comes_from_where_httpx_takes_it(tmp_path: Path) -> None:
    assert trust_locations({}) == {"cafile": certifi.where()}
    assert trust_locations({"SSL_CERT_DIR": str(tmp_path)}) == {"capath": str(tmp_path)}
    assert trust_locations({"SSL_CERT_FILE": "/x.pem", "SSL_CERT_DIR": str(tmp_path)}) \
        == {"cafile": "/x.pem"}
    assert trust_locations({"SSL_CERT_FILE": "", "SSL_CERT_DIR": ""}) \
        == {"cafile": certifi.where()}


def test_an_untrusted_certificate_is_refused(tls_server: str) -> None:
    ctx = DeferredTrustContext.create(environ={})
    with httpx.Client(verify=ctx) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        client.get(tls_server)
    assert ctx.trust_loaded and ctx.cert_store_stats()["x509_ca"] > 0   # certifi's bundle


def test_a_certificate_trusted_by_ssl_cert_file_is_accepted(
        tls_server: str, certificate: tuple[Path, Path]) -> None:
    ctx = DeferredTrustContext.create(environ={"SSL_CERT_FILE": str(certificate[0])})
    with httpx.Client(verify=ctx) as client:
        assert client.get(tls_server).content == b"hello"
    assert ctx.cert_store_stats()["x509_ca"] == 1


def test_the_hostname_is_checked(tls_server: str, certificate: tuple[Path, Path]) -> None:
    ctx = DeferredTrustContext.create(environ={"SSL_CERT_FILE": str(certificate[0])})
    port = tls_server.rsplit(":", 1)[1]
    with httpx.Client(verify=ctx) as client, \
            pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED.*mismatch"):
        client.get(f"https://127.0.0.1:{port}")   # the same server, a name not certified


def test_a_loopback_registry_never_loads_the_trust_store(
        registry: Registry, repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    img = make_image([make_layer([file("hello", b"world\n")])])
    push(registry, repo, "v1", img)
    loads: list[object] = []
    original = ssl.SSLContext.load_verify_locations

    def spy(self: ssl.SSLContext, *args: object, **kwargs: object) -> None:
        loads.append(args or kwargs)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", spy)
    with RegistryClient(credentials=NoCredentials()) as client:
        assert client.get_manifest(registry.host, repo, "v1").body == img.manifest
    assert loads == []
    DeferredTrustContext.create(environ={}).load_trust()   # the spy does see a load
    assert loads == [{"cafile": certifi.where()}]
