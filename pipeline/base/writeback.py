"""Asking the kernel to start writing a file's new data to disk while we go on.

Outputs end with an fsync (``base.files``, ``ext4.output``). Left to it, the
hundreds of megabytes an image is made of are all written then, while the
build waits (0.06-0.26 s per 200 MiB measured here). ``sync_file_range``
with ``SYNC_FILE_RANGE_WRITE`` only queues the writeback and returns, so
asked every few tens of megabytes it keeps the disk busy during the work and
the final fsync finds little left. It is not in ``os``: called through
ctypes, and where that fails (another libc, a filesystem that refuses) the
fsync does it all, as before. (The native writer's copy helper carries its
own copy of this: it runs with nothing but the standard library.)
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

__all__ = ["Writeback", "WRITEBACK_EVERY"]

WRITEBACK_EVERY = 32 << 20
_SYNC_FILE_RANGE_WRITE = 2

_Call = Callable[[int, int, int, int], int]


def _bind() -> _Call | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


class Writeback:
    """Writeback of ``fd`` from byte ``start`` on, started each time ``every`` more bytes
    are written (``written``) and once for the rest (``finish``)."""

    def __init__(self, fd: int, start: int = 0, *, every: int = WRITEBACK_EVERY) -> None:
        self.fd, self.first, self.every = fd, start, every
        self.next = start + every
        self.call = _bind()

    def written(self, upto: int) -> None:
        """Every byte of ``fd`` from the start to ``upto`` has been written."""
        if upto >= self.next:
            self.finish(upto)

    def finish(self, upto: int) -> None:
        """Start the writeback of everything written so far, up to ``upto``."""
        if self.call is not None and upto > self.first:
            if self.call(self.fd, self.first, upto - self.first, _SYNC_FILE_RANGE_WRITE):
                self.call = None        # refused here: the final fsync writes it all
            self.first, self.next = upto, upto + self.every
