"""Exact, hashed, bounded reads over a layer's decompressed chunks.

The tar reader never sees the decompressor directly: it reads through a
``LayerStream``, which hashes and counts every uncompressed byte as it passes
(the ``diff_id`` covers the whole stream, trailing bytes included), stops a
decompression bomb at the caller's byte limit, and can decompress in a
background thread while the reader spends its time in file-creation system
calls.

Refuses to trust: the stream's length (every byte is counted against the
limit before the reader gets it).
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator

from pipeline.base.digest import VerifyingHasher
from pipeline.errors import LimitExceeded

__all__ = ["LayerStream", "PREFETCH_CHUNKS"]

# Decompressed chunks buffered ahead of the tar reader (so at most this many MiB).
PREFETCH_CHUNKS = 8


def _closed() -> Iterator[bytes]:
    raise AssertionError("internal error: LayerStream read after close()")
    yield b""  # pragma: no cover - makes this a generator


class LayerStream:
    """Exact reads over decompressed chunks; every byte is hashed, counted and limited.

    Used by the tar reader: headers are read with ``read``, file contents go
    straight from the decompressor's chunks to a file with ``copy_to`` (no
    intermediate copy), and ``drain`` hashes whatever follows the archive.
    """

    __slots__ = ("_chunks", "_buf", "_pos", "_hasher", "_limit", "_layer", "_queue", "_stop",
                 "_thread")

    def __init__(self, chunks: Iterator[bytes], hasher: VerifyingHasher, *, limit: int,
                 layer: str, background: bool = False) -> None:
        self._chunks = chunks
        self._buf = b""
        self._pos = 0
        self._hasher = hasher
        self._limit = limit
        self._layer = layer
        self._queue: queue.Queue[bytes | BaseException | None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            # The tar reader spends much of its time in file-creation syscalls,
            # which release the GIL: decompress and hash meanwhile (about 10% off
            # a large unpack on two cores; the queue bounds memory to 8 chunks).
            self._queue = queue.Queue(maxsize=PREFETCH_CHUNKS)
            self._thread = threading.Thread(target=self._produce, name="layer-decompress",
                                            daemon=True)
            self._thread.start()

    def __enter__(self) -> LayerStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the background reader (if any) and wait for it."""
        if self._thread is None or self._queue is None:
            return
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()
        self._thread = None
        self._queue = None
        self._chunks = _closed()

    def _next_checked(self) -> bytes | None:
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        self._hasher.update(chunk)
        if self._hasher.count > self._limit:
            raise LimitExceeded(self._layer, f"uncompressed stream passes {self._limit} bytes"
                                " (unpack.Limits.max_stream_bytes); a decompression bomb, or raise"
                                " the limit for this image")
        return chunk

    def _produce(self) -> None:
        assert self._queue is not None
        item: bytes | BaseException | None
        try:
            while not self._stop.is_set():
                try:
                    item = self._next_checked()
                except BaseException as e:  # handed to the reader, raised there
                    item = e
                while not self._stop.is_set():
                    try:
                        self._queue.put(item, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if item is None or isinstance(item, BaseException):
                    return
        finally:
            close = getattr(self._chunks, "close", None)
            if close is not None:
                close()

    def _fill(self) -> bool:
        if self._queue is None:
            chunk = self._next_checked()
        else:
            got = self._queue.get()
            if isinstance(got, BaseException):
                self._queue.put(got)  # every later read fails the same way
                raise got
            if got is None:
                self._queue.put(None)
            chunk = got
        if chunk is None:
            return False
        self._buf, self._pos = chunk, 0
        return True

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes; fewer only at the end of the stream."""
        end = self._pos + n
        if end <= len(self._buf):
            data = self._buf[self._pos:end]
            self._pos = end
            return data
        parts = [self._buf[self._pos:]]
        got = len(parts[0])
        self._buf, self._pos = b"", 0
        while got < n and self._fill():
            take = self._buf[: n - got]
            self._pos = len(take)
            parts.append(take)
            got += len(take)
        return b"".join(parts)

    def copy_to(self, fd: int, n: int) -> int:
        """Write up to ``n`` bytes to ``fd`` straight from the chunks; bytes copied."""
        done = 0
        while done < n:
            if self._pos == len(self._buf) and not self._fill():
                break
            view = memoryview(self._buf)[self._pos: self._pos + n - done]
            while view:
                written = os.write(fd, view)
                view = view[written:]
                self._pos += written
                done += written
        return done

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            if self._pos == len(self._buf) and not self._fill():
                break
            step = min(n - done, len(self._buf) - self._pos)
            self._pos += step
            done += step
        return done

    def drain(self) -> None:
        """Read (and hash) everything left, e.g. the zero blocks and padding."""
        self._buf, self._pos = b"", 0
        while self._fill():
            self._pos = len(self._buf)
