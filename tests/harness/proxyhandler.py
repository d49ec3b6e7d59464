"""The HTTP plumbing of :mod:`tests.harness.faultproxy`: one request in, one out.

Bodies are streamed in ``CHUNK`` pieces both ways; chunked request bodies are
re-chunked upstream, responses keep the upstream Content-Length or are
re-chunked to the client. ``Host`` is passed through on the main listener, so
the registry's upload ``Location`` headers point back at the proxy.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING

from .faultproxy import (
    CHUNK,
    HOP_BY_HOP,
    Fault,
    Listener,
    ProxyRequest,
    http_date,
    reset_connection,
    upstream_connection,
)

if TYPE_CHECKING:
    from .faultproxy import FaultProxy

__all__ = ["make_handler"]

_ERROR_CODES = {429: "TOOMANYREQUESTS", 503: "UNAVAILABLE", 500: "UNKNOWN", 404: "NOT_FOUND",
                403: "DENIED", 401: "UNAUTHORIZED", 400: "BAD_REQUEST"}


def make_handler(proxy: FaultProxy, listener: Listener) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            self._handle()

        do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_GET  # noqa: N815

        # -- request side ------------------------------------------------------------------

        def _request_chunks(self) -> Iterator[bytes]:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return
                    left = size
                    while left:
                        data = self.rfile.read(min(left, CHUNK))
                        if not data:
                            return
                        left -= len(data)
                        yield data
                    self.rfile.readline()
            else:
                left = int(self.headers.get("Content-Length", "0") or 0)
                while left > 0:
                    data = self.rfile.read(min(left, CHUNK))
                    if not data:
                        return
                    left -= len(data)
                    yield data

        def _drain(self) -> None:
            for _ in self._request_chunks():
                pass

        # -- dispatch --------------------------------------------------------------------

        def _handle(self) -> None:
            entry = ProxyRequest(listener, self.command, self.path, self.headers.get("Range"),
                                 "Authorization" in self.headers)
            path, auth = self.path, self.headers.get("Authorization")
            # Logged first and filled in before each byte goes out, so a test that
            # has just read a response always finds its final entry.
            proxy.record(entry)
            try:
                if listener == "redirect":
                    m = re.fullmatch(r"/presigned/([0-9a-f]+)", urllib.parse.urlsplit(path).path)
                    found = proxy.redirect_target(m.group(1)) if m else None
                    if found is None:
                        self._drain()
                        self._answer(entry, 404, b'{"errors":[{"code":"NOT_FOUND"}]}', {})
                        return
                    path, auth = found
                fault = proxy.match(listener, self.command, self.path)
                entry.fault = fault.describe() if fault else None
                if fault is not None and fault.kind == "status":
                    self._drain()
                    self._status(entry, fault)
                elif fault is not None and fault.kind == "body":
                    self._drain()
                    self._answer(entry, fault.code, fault.content or b"",
                                 dict(h for h in fault.header_items if h[1] is not None))
                elif fault is not None and fault.kind == "redirect":
                    self._drain()
                    location = proxy.stash_redirect(path, auth)
                    self._answer(entry, 307, b"", {"Location": location})
                else:
                    self._forward(entry, fault, path, auth)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        # -- answers made here -------------------------------------------------------------

        def _answer(self, entry: ProxyRequest, status: int, body: bytes,
                    headers: dict[str, str]) -> None:
            entry.status = status
            self.send_response_only(status)
            headers.setdefault("Content-Type", "application/json")
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                entry.body_bytes = len(body)
                self.wfile.write(body)

        def _status(self, entry: ProxyRequest, fault: Fault) -> None:
            headers = dict((k, v) for k, v in fault.header_items if v is not None)
            if fault.retry_after is not None:
                headers["Retry-After"] = fault.retry_after
            if fault.retry_after_date_s is not None:
                headers["Retry-After"] = http_date(fault.retry_after_date_s)
            body = fault.content
            if body is None:
                code = _ERROR_CODES.get(fault.code, "UNKNOWN")
                body = json.dumps({"errors": [{"code": code, "detail": None,
                                               "message": f"injected by the fault proxy: "
                                                          f"{fault.code}"}]}).encode()
            self._answer(entry, fault.code, body, headers)

        # -- forwarding ------------------------------------------------------------------

        def _forward(self, entry: ProxyRequest, fault: Fault | None, path: str,
                     auth: str | None) -> None:
            conn = upstream_connection(proxy)
            try:
                conn.putrequest(self.command, path, skip_host=True, skip_accept_encoding=True)
                chunked_in = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
                for k, v in self.headers.items():
                    lk = k.lower()
                    if lk in HOP_BY_HOP or lk == "authorization" or (
                            listener == "redirect" and lk == "host"):
                        continue
                    conn.putheader(k, v)
                if listener == "redirect":
                    conn.putheader("Host", f"{proxy.upstream_host}:{proxy.upstream_port}")
                if auth is not None:
                    conn.putheader("Authorization", auth)
                if chunked_in:
                    conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                for data in self._request_chunks():
                    conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked_in else data)
                if chunked_in:
                    conn.send(b"0\r\n\r\n")
                resp = conn.getresponse()
                self._relay(entry, fault, resp)
            finally:
                conn.close()

        def _relay(self, entry: ProxyRequest, fault: Fault | None, resp: object) -> None:
            status = resp.status  # type: ignore[attr-defined]
            entry.status = status
            headers = [(k, v) for k, v in resp.getheaders()  # type: ignore[attr-defined]
                       if k.lower() not in HOP_BY_HOP]
            if fault is not None and fault.kind == "headers":
                for name, value in fault.header_items:
                    headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
                    if value is not None:
                        headers.append((name, value))
            length = next((int(v) for k, v in headers if k.lower() == "content-length"), None)
            has_body = self.command != "HEAD" and status >= 200 and status not in (204, 304)
            chunked = has_body and length is None
            self.send_response_only(status, resp.reason)  # type: ignore[attr-defined]
            for k, v in headers:
                self.send_header(k, v)
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            if not has_body:
                return
            flip_from = flip_to = -1
            if fault is not None and fault.kind == "corrupt":
                flip_from = fault.offset if fault.offset is not None else (length or 0) // 2
                flip_to = flip_from + fault.length
            cut = fault.after_bytes if fault is not None and fault.kind == "reset" else None
            sent = 0
            while True:
                data = resp.read(CHUNK)  # type: ignore[attr-defined]
                if not data:
                    break
                if flip_from < sent + len(data) and flip_to > sent:
                    buf = bytearray(data)
                    for i in range(max(flip_from, sent), min(flip_to, sent + len(data))):
                        buf[i - sent] ^= 0xFF
                    data = bytes(buf)
                if cut is not None and sent + len(data) >= cut:
                    data = data[:cut - sent]
                    entry.body_bytes = sent + len(data)
                    self._write(data, chunked)
                    self._reset()
                    return
                sent += len(data)
                entry.body_bytes = sent
                self._write(data, chunked)
            if cut is not None:
                self._reset()
                return
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

        def _write(self, data: bytes, chunked: bool) -> None:
            if not data:
                return
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)

        def _reset(self) -> None:
            reset_connection(self.connection)
            self.close_connection = True
            self.rfile.close()  # drop makefile's reference so close() really closes
            self.connection.close()

    return Handler
