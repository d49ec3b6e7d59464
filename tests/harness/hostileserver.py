"""A scripted hostile HTTP server on 127.0.0.1: raw bytes, any header, any pace.

A real registry (and the fault proxy, which speaks through ``http.server``)
cannot send what a hostile one does: non-ASCII header bytes, a body one
byte every few seconds, a few KB of gzip that inflate to gigabytes. This
server reads each request's head and answers with a ``Script``: a status
line, raw header lines and body pieces, each piece after an optional delay.
Scripts are chosen per request by a path regex; unmatched requests get 404.
Every request head is recorded for assertions.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass, field

__all__ = ["HostileServer", "Script", "Piece"]


@dataclass(frozen=True, slots=True)
class Piece:
    """Body bytes sent after waiting ``delay_s``."""

    data: bytes
    delay_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Script:
    """One response, byte for byte: no Content-Length unless a header line gives it."""

    status: bytes = b"200 OK"
    headers: tuple[bytes, ...] = ()
    body: tuple[Piece, ...] = ()

    @staticmethod
    def simple(status: int, body: bytes = b"", *headers: bytes,
               length: bool = True) -> Script:
        lines = (*headers, b"Content-Length: %d" % len(body)) if length else headers
        return Script(b"%d X" % status, tuple(lines), (Piece(body),) if body else ())

    @staticmethod
    def trickle(total: int, *, every_s: float, piece: bytes = b"x", status: int = 200,
                headers: tuple[bytes, ...] = ()) -> Script:
        """``total`` bytes, ``piece`` at a time, one piece every ``every_s`` seconds."""
        count = total // len(piece)
        return Script(b"%d X" % status, (*headers, b"Content-Length: %d" % (count * len(piece))),
                      tuple(Piece(piece, every_s) for _ in range(count)))


@dataclass(slots=True)
class HostileServer:
    """Serve scripts on 127.0.0.1 until stopped; use as a context manager."""

    scripts: list[tuple[re.Pattern[str], Script]] = field(default_factory=list)
    heads: list[str] = field(default_factory=list)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def host(self) -> str:
        assert self._sock is not None
        return f"127.0.0.1:{self._sock.getsockname()[1]}"

    @property
    def port(self) -> int:
        assert self._sock is not None
        return int(self._sock.getsockname()[1])

    def add(self, path: str, script: Script) -> None:
        """Answer requests whose path matches ``path`` (a regex) with ``script``; first wins."""
        self.scripts.append((re.compile(path), script))

    def __enter__(self) -> HostileServer:
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()
        self._threads.append(accept)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            worker = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            worker.start()
            self._threads.append(worker)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            try:
                while b"\r\n\r\n" not in head and len(head) < 65536:
                    data = conn.recv(4096)
                    if not data:
                        return
                    head += data
            except OSError:
                return
            text = head.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            self.heads.append(text)
            path = text.split(" ", 2)[1] if text.count(" ") >= 2 else "/"
            script = next((s for pattern, s in self.scripts if pattern.search(path)),
                          Script.simple(404, b'{"errors":[]}'))
            try:
                conn.sendall(b"HTTP/1.1 " + script.status + b"\r\n"
                             + b"".join(h + b"\r\n" for h in script.headers)
                             + b"Connection: close\r\n\r\n")
                for piece in script.body:
                    if piece.delay_s and self._stop.wait(piece.delay_s):
                        return
                    conn.sendall(piece.data)
            except OSError:
                return  # the client gave up: that is often the point
            time.sleep(0.01)
