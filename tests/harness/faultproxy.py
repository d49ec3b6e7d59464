"""A fault-injecting HTTP proxy in front of a real registry.

It streams every body in both directions (a 100 MB blob never sits in
memory), passes ``Range`` through so clients can resume with 206, and, when a
rule matches, injects a fault a real registry will not produce on demand:

- ``Fault.reset(after_bytes=N)``: forward status and headers, send N body
  bytes, then reset the TCP connection (SO_LINGER 0, so the client sees RST);
- ``Fault.status(code, retry_after=..)`` and the ``too_many_requests`` and
  ``unavailable`` shorthands: answer 429/503/... with a registry-style error
  body and ``Retry-After`` as seconds or as an HTTP date;
- ``Fault.corrupt(offset=, length=)``: flip bytes in the body, length unchanged;
- ``Fault.redirect()``: answer a blob GET with 307 to a second listener on a
  different origin (``localhost:<other port>``) that serves the blob like a
  presigned storage URL and records whether an Authorization header arrived;
- ``Fault.headers(...)`` and ``Fault.body(...)``: rewrite response headers or
  replace the body (Content-Type confusion, lying Docker-Content-Digest).

Every request is logged (:class:`ProxyRequest`) for assertions.
"""

from __future__ import annotations

import email.utils
import http.client
import re
import secrets
import socket
import struct
import threading
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Literal

__all__ = ["Fault", "FaultProxy", "ProxyRequest", "Rule"]

CHUNK = 256 * 1024
"""Streaming unit in bytes: large enough for loopback speed, small enough for memory."""
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate",
                        "proxy-authorization", "te", "trailers", "transfer-encoding", "upgrade"})
UPSTREAM_TIMEOUT_S = 60.0
POLL_S = 0.02
"""serve_forever's shutdown poll: the default 0.5 s would add a second to every test."""

Listener = Literal["proxy", "redirect"]


@dataclass(frozen=True, slots=True)
class Fault:
    """What to do to one matching request; build with the static constructors."""

    kind: str
    after_bytes: int = 0
    code: int = 0
    retry_after: str | None = None
    retry_after_date_s: float | None = None
    header_items: tuple[tuple[str, str | None], ...] = ()
    content: bytes | None = None
    offset: int | None = None
    length: int = 1

    @staticmethod
    def reset(after_bytes: int = 0) -> Fault:
        """Send status, headers and ``after_bytes`` of the body, then reset the connection."""
        return Fault("reset", after_bytes=after_bytes)

    @staticmethod
    def status(code: int, *, retry_after: int | str | None = None,
               retry_after_date: float | None = None,
               headers: Mapping[str, str] | None = None, body: bytes | None = None) -> Fault:
        """Answer ``code`` without asking upstream. ``retry_after`` goes out verbatim
        (seconds); ``retry_after_date`` is seconds from now, sent as an HTTP date."""
        return Fault("status", code=code,
                     retry_after=None if retry_after is None else str(retry_after),
                     retry_after_date_s=retry_after_date,
                     header_items=tuple((headers or {}).items()), content=body)

    @staticmethod
    def too_many_requests(retry_after: int | str | None = 1, *,
                          retry_after_date: float | None = None) -> Fault:
        return Fault.status(429, retry_after=retry_after, retry_after_date=retry_after_date)

    @staticmethod
    def unavailable(retry_after: int | str | None = None) -> Fault:
        return Fault.status(503, retry_after=retry_after)

    @staticmethod
    def corrupt(offset: int | None = None, length: int = 1) -> Fault:
        """Flip ``length`` body bytes at ``offset`` (default: the middle of the body)."""
        return Fault("corrupt", offset=offset, length=length)

    @staticmethod
    def redirect() -> Fault:
        """307 to the redirect listener (another origin), which serves the same resource."""
        return Fault("redirect")

    @staticmethod
    def headers(**changes: str | None) -> Fault:
        """Forward, but set (or with None, remove) response headers;
        use underscores for dashes: ``content_type="text/plain"``."""
        return Fault("headers", header_items=tuple((k.replace("_", "-"), v)
                                                   for k, v in changes.items()))

    @staticmethod
    def body(content: bytes, *, status: int = 200,
             headers: Mapping[str, str] | None = None) -> Fault:
        """Answer with ``content`` instead of asking upstream (Content-Length set)."""
        return Fault("body", code=status, content=content,
                     header_items=tuple((headers or {}).items()))

    def describe(self) -> str:
        return self.kind if self.kind != "status" else f"status {self.code}"


@dataclass(slots=True, eq=False)
class Rule:
    """Apply ``fault`` to matching requests number ``nth`` .. ``nth + times - 1``
    (1-based; ``times=None``: from ``nth`` on, forever)."""

    fault: Fault
    method: str | None
    path: re.Pattern[str]
    nth: int = 1
    times: int | None = 1
    listener: Listener = "proxy"
    seen: int = 0
    fired: int = 0

    def take(self, listener: Listener, method: str, path: str) -> bool:
        if listener != self.listener or (self.method and method != self.method):
            return False
        if not self.path.search(path):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times is not None and self.seen >= self.nth + self.times):
            return False
        self.fired += 1
        return True


@dataclass(slots=True)
class ProxyRequest:
    """One request through the proxy (or its redirect listener), as the client sent it."""

    listener: Listener
    method: str
    path: str
    range: str | None
    authorization: bool
    status: int = 0
    fault: str | None = None
    body_bytes: int = 0
    """Response body bytes actually sent to the client."""
    time: float = field(default_factory=time.time)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class FaultProxy:
    """Proxy on ``127.0.0.1:<port>`` to ``upstream`` (a Registry or base URL)."""

    def __init__(self, upstream: object, *, redirect_host: str = "localhost") -> None:
        url = upstream if isinstance(upstream, str) else getattr(upstream, "url")
        parts = urllib.parse.urlsplit(url)
        self.upstream = upstream
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rules: list[Rule] = []
        self.log: list[ProxyRequest] = []
        self._redirects: dict[str, tuple[str, str | None]] = {}
        self._lock = threading.Lock()
        from .proxyhandler import make_handler  # handler module holds the HTTP plumbing

        self._proxy = _Server(("127.0.0.1", 0), make_handler(self, "proxy"))
        self._other = _Server(("127.0.0.1", 0), make_handler(self, "redirect"))
        self.redirect_origin = f"{redirect_host}:{self._other.server_address[1]}"
        self._threads: list[threading.Thread] = []

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._proxy.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def redirect_url(self) -> str:
        return f"http://{self.redirect_origin}"

    @property
    def auth(self) -> object:
        """The upstream registry's push credentials, so ``push(proxy, ...)`` works."""
        return getattr(self.upstream, "auth", None)

    def add(self, fault: Fault, *, method: str | None = "GET", path: str = ".*",
            nth: int = 1, times: int | None = 1, listener: Listener = "proxy") -> Rule:
        """Inject ``fault`` into matching requests (``path``: regex searched in the
        request target, query included). Earlier rules win when several fire."""
        rule = Rule(fault, method, re.compile(path), nth, times, listener)
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        """Drop all rules and the log."""
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def requests(self, *, method: str | None = None, path: str | None = None,
                 listener: Listener | None = None) -> list[ProxyRequest]:
        """Logged requests filtered by method, path regex and listener."""
        with self._lock:
            return [r for r in self.log
                    if (method is None or r.method == method)
                    and (path is None or re.search(path, r.path))
                    and (listener is None or r.listener == listener)]

    def match(self, listener: Listener, method: str, path: str) -> Fault | None:
        with self._lock:
            found = None
            for rule in self.rules:
                if rule.take(listener, method, path) and found is None:
                    found = rule.fault
            return found

    def record(self, entry: ProxyRequest) -> None:
        with self._lock:
            self.log.append(entry)

    def stash_redirect(self, path: str, authorization: str | None) -> str:
        """Remember what a redirect stands for, like a presigned URL: the second
        listener fetches ``path`` upstream with the original credentials."""
        key = secrets.token_hex(8)
        with self._lock:
            self._redirects[key] = (path, authorization)
        return f"{self.redirect_url}/presigned/{key}"

    def redirect_target(self, key: str) -> tuple[str, str | None] | None:
        with self._lock:
            return self._redirects.get(key)

    def start(self) -> FaultProxy:
        for server in (self._proxy, self._other):
            t = threading.Thread(target=server.serve_forever, args=(POLL_S,), daemon=True,
                                 name="fault-proxy")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        for server in (self._proxy, self._other):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def reset_connection(sock: socket.socket) -> None:
    """Close with SO_LINGER 0 so the peer gets a TCP RST, not a clean FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass


def upstream_connection(proxy: FaultProxy) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port,
                                      timeout=UPSTREAM_TIMEOUT_S)
