"""Unpack a layer while its blob downloads: a tee from the blob cache into ``unpack_stream``.

``OverlappedUnpack`` is what ``BlobCache.fetch`` calls its ``tee``: every
chunk the download writes to its temporary file is also put on a bounded
queue (``TEE_BUFFER_BYTES``), and a thread runs ``unpack.unpack_stream``
over that queue, the same decompress -> LayerStream -> tar reader path that
``unpack_layer`` runs over a file. When the unpacker falls behind, the queue
fills and the download waits for it, so memory stays bounded and the two
overlap instead of running one after the other.

What it refuses to trust: the bytes it passes on are not verified yet.
The unpacker is built for hostile bytes anyway (a verified blob can hold a
hostile tar), and it writes only into a temporary store. The store's
commit needs the end of the input, and the input ends only when the blob
cache calls ``verified()``, after the blob's digest and size matched; the
unpacker then checks the diff_id itself. Anything else ends the input with
an error, which aborts the temporary store:

- the download restarts from byte 0 (``restart()``: a resume the server
  refused, a spliced blob that failed its digest), or bytes arrive at any
  offset but the next one (a fallback to another mirror);
- the download fails (the context manager's exit aborts);
- the unpacker itself fails: it stops consuming, and the rest of the
  download is simply not passed on.

In every one of those cases the overlap gives up quietly: the layer's own
``unpack:<digest>`` task then unpacks the verified blob as usual, and
reports a real layer error properly. A resume with ``Range`` continues at
the next offset, so the unpacker just keeps going.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

import structlog

from pipeline.layers.limits import Limits
from pipeline.layers.store import LayerStore
from pipeline.layers.unpack import unpack_stream
from pipeline.oci.resolved import LayerRef

__all__ = ["OverlappedUnpack", "TEE_BUFFER_BYTES"]

log = structlog.get_logger(__name__)

# Compressed bytes queued between the download and the unpacker: enough to
# smooth out bursts of network reads (64 KiB each) and of file creation,
# small next to the unpacker's own 8 MiB of decompressed prefetch.
TEE_BUFFER_BYTES = 4 << 20
# The unpacker takes the download's 64 KiB reads in batches of about this
# much: every hand-over costs both threads a trip through the GIL, which on
# two busy cores is what makes small hand-overs slow, not the copying.
TEE_BATCH_BYTES = 1 << 20


class _GaveUp(Exception):
    """Ends the unpacker's input when the overlap is abandoned (never leaves this module)."""


class OverlappedUnpack:
    """A ``BlobCache`` tee that unpacks ``layer`` into ``layers_root`` as the blob arrives.

    Use as a context manager around the fetch; afterwards ``store`` is the
    committed store, or None and ``gave_up`` says why.
    """

    def __init__(self, layer: LayerRef, layers_root: Path, *, limits: Limits,
                 buffer_bytes: int = TEE_BUFFER_BYTES) -> None:
        self.layer = layer
        self.layers_root = Path(layers_root)
        self.limits = limits
        self.buffer_bytes = buffer_bytes
        self._batch = min(TEE_BATCH_BYTES, buffer_bytes)  # a full queue must wake the unpacker
        self.store: LayerStore | None = None
        self.gave_up: str | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._taken = threading.Condition(self._lock)
        self._chunks: deque[bytes] = deque()
        self._queued = 0
        self._next = 0  # blob offset of the next byte the unpacker expects
        self._open = True  # the unpacker still takes bytes
        self._verified = False
        self._thread: threading.Thread | None = None

    # The tee, called by the download thread --------------------------------

    def feed(self, offset: int, chunk: bytes) -> None:
        """``chunk`` was written at blob ``offset``; waits while the queue is full."""
        with self._lock:
            if not self._open or self._verified or not chunk:
                return
            if offset != self._next:
                self._give_up(f"bytes arrived at offset {offset}, the unpacker is at"
                              f" {self._next} (the download started over)")
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"overlap-{self.layer.digest.short}")
                self._thread.start()
            while self._queued >= self.buffer_bytes and self._open:
                self._taken.wait()
            if self._open:
                self._chunks.append(chunk)
                self._queued += len(chunk)
                self._next += len(chunk)
                if self._queued >= self._batch:
                    self._arrived.notify()

    def restart(self) -> None:
        """The download starts over from byte 0: what was passed on is worthless."""
        with self._lock:
            if self._next:
                self._give_up("the download started over from byte 0")

    def verified(self) -> None:
        """Every byte passed on is the blob, whose digest and size just matched."""
        with self._lock:
            if self._open:
                self._verified = True
                self._arrived.notify()

    # The unpacker's side ----------------------------------------------------

    def _input(self) -> Iterator[bytes]:
        while True:
            with self._lock:
                while self._queued < self._batch and self._open and not self._verified:
                    self._arrived.wait()
                if not self._open:
                    raise _GaveUp(self.gave_up)
                if not self._chunks:
                    return  # verified, and everything was handed over
                batch = [self._chunks.popleft()]
                size = len(batch[0])
                while self._chunks and size + len(self._chunks[0]) <= self._batch:
                    batch.append(self._chunks.popleft())
                    size += len(batch[-1])
                self._queued -= size
                self._taken.notify()
            yield batch[0] if len(batch) == 1 else b"".join(batch)

    def _run(self) -> None:
        try:
            store = unpack_stream(self._input(), self.layer, self.layers_root,
                                  limits=self.limits)
        except _GaveUp:
            return  # the reason is already recorded
        except Exception as err:  # noqa: BLE001 - the unpack task redoes it and reports it
            with self._lock:
                self._give_up(f"the unpacker failed: {err}")
            return
        with self._lock:
            self.store = store
            # Normally the input has ended; if a finished store was found
            # instead, nothing reads the rest, so stop taking it.
            self._close()

    def _give_up(self, reason: str) -> None:
        """With the lock held: stop passing bytes on and let both sides go."""
        if self.gave_up is None and self.store is None:
            self.gave_up = reason
            log.debug("overlap.gave_up", digest=str(self.layer.digest), reason=reason)
        self._close()

    def _close(self) -> None:
        self._open = False
        self._chunks.clear()
        self._queued = 0
        self._arrived.notify_all()
        self._taken.notify_all()

    # Around the fetch -------------------------------------------------------

    def __enter__(self) -> OverlappedUnpack:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        with self._lock:
            if exc is not None:
                self._give_up(f"the download failed: {str(exc) or type(exc).__name__}")
            elif self._thread is None:
                self._give_up("the blob was already in the cache")
            elif not self._verified:
                self._give_up("internal error: the download ended without verifying the blob")
        if self._thread is not None:
            self._thread.join()
            self._thread = None
