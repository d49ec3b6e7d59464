"""A small Docker token server (distribution spec auth/token.md, auth/oauth.md).

Serves ``GET <realm>?service=&scope=`` (anonymous or HTTP Basic) and
``POST <realm>`` with ``grant_type=password`` or ``refresh_token`` (how Docker
uses identity tokens), and signs ES256 JWTs the real registry accepts: ``iss``,
``aud`` (= service), ``nbf``/``exp``, and the ``access`` claim listing the
granted actions per repository. The signing key's self-signed certificate is
the registry's ``rootcertbundle``; the JWT header carries it as ``x5c`` (or a
libtrust ``kid``), the two ways distribution 2.8 finds the key.

Policy (Docker Hub-like): anonymous clients may pull repositories outside
``private/``; a known user may pull and push everything. Knobs for tests:
``expires_in``, :meth:`narrow` (hand out tokens without the access asked for,
so the registry answers 401 ``insufficient_scope``), :meth:`fail` (the token
endpoint answers an error status), and :attr:`log` of every request.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import secrets
import threading
import time
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

__all__ = ["TokenServer", "TokenRequest", "libtrust_key_id", "parse_scope"]

DEFAULT_EXPIRES_IN_S = 60
"""Docker Hub hands out 300 s tokens; 60 s is the spec's minimum and the client's default."""
PRIVATE_PREFIX = "private/"


def libtrust_key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The ``kid`` distribution expects: sha256 of the DER SubjectPublicKeyInfo cut to
    240 bits, base32, in 12 colon-separated groups of 4 (auth/jwt.md, "Headers")."""
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i:i + 4] for i in range(0, 48, 4))


def parse_scope(scope: str) -> tuple[str, str, tuple[str, ...]]:
    """``repository:name:pull,push`` -> ("repository", "name", ("pull", "push"))."""
    kind, _, rest = scope.partition(":")
    name, _, actions = rest.rpartition(":")
    return kind, name, tuple(a for a in actions.split(",") if a)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request the token server saw."""

    method: str
    grant: str
    """"get" for GET, else the POST ``grant_type``."""
    service: str | None
    scopes: tuple[str, ...]
    account: str | None
    who: str | None
    """Authenticated user name, None when anonymous."""
    status: int
    granted: tuple[tuple[str, str, tuple[str, ...]], ...]
    client_id: str | None
    time: float


def _consume(left: int | None) -> tuple[bool, int | None]:
    """A use counter: None applies forever, n > 0 applies and counts down, 0 is off."""
    if left is None:
        return True, None
    if left > 0:
        return True, left - 1
    return False, 0


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rootfs-pipeline test token issuer")])
    now = dt.datetime.now(dt.timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


class TokenServer:
    """Threaded token server on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self, *, users: dict[str, str] | None = None,
                 service: str = "rootfs-pipeline-test-registry",
                 issuer: str = "rootfs-pipeline-test-issuer",
                 expires_in: int = DEFAULT_EXPIRES_IN_S,
                 anonymous_pull: bool = True,
                 key_header: Literal["x5c", "kid"] = "x5c") -> None:
        self.users = dict(users or {"alice": "wonderland"})
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        self.anonymous_pull = anonymous_pull
        self.key_header = key_header
        self.refresh_tokens: dict[str, str] = {}
        self.log: list[TokenRequest] = []
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._cert = _self_signed(self._key)
        self._lock = threading.Lock()
        self._narrow: int | None = 0
        self._fail: tuple[int, int | None] = (0, 0)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    @property
    def certificate_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def default_user(self) -> tuple[str, str]:
        """The first user by name: the one the harness pushes as."""
        return sorted(self.users.items())[0]

    def start(self) -> TokenServer:
        # A short shutdown poll: the default 0.5 s would slow every teardown.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name="token-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- knobs -----------------------------------------------------------------------------

    def narrow(self, count: int | None = 1) -> None:
        """The next ``count`` tokens (all of them if None) grant no access at all."""
        with self._lock:
            self._narrow = count

    def fail(self, status: int = 503, count: int | None = 1) -> None:
        """The next ``count`` requests (all if None) get ``status`` and no token."""
        with self._lock:
            self._fail = (status, count)

    def reset(self) -> None:
        """Undo narrow()/fail(), clear the log and restore the default expiry."""
        with self._lock:
            self._narrow, self._fail = 0, (0, 0)
            self.expires_in = DEFAULT_EXPIRES_IN_S
            self.log.clear()

    def issue_refresh_token(self, username: str) -> str:
        """An identity token for ``username``, as `docker login` stores in config.json."""
        token = "idt-" + secrets.token_urlsafe(24)
        with self._lock:
            self.refresh_tokens[token] = username
        return token

    def requests(self, *, scope: str | None = None) -> list[TokenRequest]:
        """Logged requests, optionally only those that asked for ``scope``."""
        with self._lock:
            return [r for r in self.log if scope is None or scope in r.scopes]

    # -- policy ----------------------------------------------------------------------------

    def allowed(self, who: str | None, kind: str, name: str) -> tuple[str, ...]:
        if who is not None:
            return ("pull", "push", "delete", "*") if kind == "repository" else ("*",)
        if kind == "repository" and self.anonymous_pull and not name.startswith(PRIVATE_PREFIX):
            return ("pull",)
        return ()

    def _should_narrow(self) -> bool:
        """Consume one narrowed token if any are pending (call with the lock held)."""
        applies, self._narrow = _consume(self._narrow)
        return applies

    def _should_fail(self) -> int:
        """The failure status for this request, or 0 (call with the lock held)."""
        status, left = self._fail
        applies, left = _consume(left)
        self._fail = (status, left)
        return status if applies else 0

    def sign(self, who: str | None, granted: list[tuple[str, str, tuple[str, ...]]]) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": who or "", "aud": self.service,
                  "iat": now, "nbf": now - 1, "exp": now + self.expires_in,
                  "jti": secrets.token_hex(8),
                  "access": [{"type": k, "name": n, "actions": list(a)} for k, n, a in granted]}
        headers: dict[str, object] = {"typ": "JWT"}
        if self.key_header == "x5c":
            der = self._cert.public_bytes(serialization.Encoding.DER)
            headers["x5c"] = [base64.b64encode(der).decode()]
        else:
            headers["kid"] = libtrust_key_id(self._key.public_key())
        return jwt.encode(claims, self._key, algorithm="ES256", headers=headers)

    def grant(self, who: str | None, scopes: tuple[str, ...]
              ) -> list[tuple[str, str, tuple[str, ...]]]:
        granted = []
        with self._lock:
            narrowed = self._should_narrow()
        for scope in scopes:
            kind, name, actions = parse_scope(scope)
            allow = self.allowed(who, kind, name)
            ok = tuple(a for a in actions if a in allow or "*" in allow)
            if ok and not narrowed:
                granted.append((kind, name, ok))
        return granted


def _handler(server: TokenServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _reply(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _basic_user(self) -> tuple[bool, str | None]:
            """(credentials ok, user) from an Authorization: Basic header."""
            header = self.headers.get("Authorization", "")
            if not header.lower().startswith("basic "):
                return True, None
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                return False, None
            return server.users.get(user) == password, user

        def _finish(self, method: str, grant: str, params: dict[str, list[str]], ok: bool,
                    who: str | None, extra: dict[str, object]) -> None:
            # GET repeats `scope`; POST packs a space-separated list into one value.
            scopes = tuple(one for value in params.get("scope", []) for one in value.split())
            first = lambda key: (params.get(key) or [None])[0]  # noqa: E731
            with server._lock:
                failing = server._should_fail()
            granted: list[tuple[str, str, tuple[str, ...]]] = []
            if failing:
                status, body = failing, {"details": "token server failure (test knob)"}
            elif not ok:
                status, body = 401, {"details": "incorrect username or password"}
            else:
                granted = server.grant(who, scopes)
                token = server.sign(who, granted)
                status = 200
                issued = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                body = {"access_token": token, "expires_in": server.expires_in,
                        "issued_at": issued, **extra}
                if method == "GET":
                    body["token"] = token
                else:
                    body["scope"] = " ".join(scopes)
            with server._lock:
                server.log.append(TokenRequest(
                    method, grant, first("service"), scopes, first("account"), who, status,
                    tuple(granted), first("client_id"), time.time()))
            self._reply(status, body)

        def do_GET(self) -> None:  # noqa: N802
            url = urllib.parse.urlsplit(self.path)
            if url.path != "/token":
                self._reply(404, {"details": "not found"})
                return
            params = urllib.parse.parse_qs(url.query)
            ok, who = self._basic_user()
            self._finish("GET", "get", params, ok, who if ok else None, {})

        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length", "0"))
            params = urllib.parse.parse_qs(self.rfile.read(length).decode())
            first = lambda key: (params.get(key) or [None])[0]  # noqa: E731
            grant = first("grant_type") or ""
            if urllib.parse.urlsplit(self.path).path != "/token":
                self._reply(404, {"details": "not found"})
                return
            if not first("client_id") or grant not in ("password", "refresh_token"):
                self._reply(400, {"error": "invalid_request",
                                  "details": "client_id and a grant_type of password or "
                                             "refresh_token are required"})
                return
            extra: dict[str, object] = {}
            if grant == "password":
                who = first("username")
                ok = who is not None and server.users.get(who) == first("password")
                if ok and who is not None and first("access_type") == "offline":
                    extra["refresh_token"] = server.issue_refresh_token(who)
            else:
                refresh = first("refresh_token") or ""
                who = server.refresh_tokens.get(refresh)
                ok = who is not None
                if ok:
                    extra["refresh_token"] = refresh
            self._finish("POST", grant, params, ok, who if ok else None, extra)

    return Handler
