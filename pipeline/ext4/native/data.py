"""File contents: which blocks hold data, and copying them into the image.

``probe`` looks at a regular file's content (a range of a layer store's
pack, or a file of its own), checks that it holds the size its entry
declares, and lists its data segments in whole 4 KiB blocks: with
SEEK_DATA/SEEK_HOLE when the file has fewer blocks on disk than its size (a
sparse file), else the whole content in one segment. A hole of the source
stays a hole of the image (no extent, no block); layer stores are written
densely, so images built from them do not depend on the host filesystem.

The bytes themselves are moved by ``copyproc``, in a helper process.

Trusts nothing about the content's file: a size that disagrees with the
entry (a pack: too small for the range), or anything but a regular file, is
refused.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from pipeline.ext4.native.errors import BadTree
from pipeline.ext4.native.geometry import BLOCK_SIZE

__all__ = ["Segment", "Content", "probe", "write_at"]

_SECTOR = 512

Segment = tuple[int, int]
"""(first block, number of blocks) of file data; everything else is a hole."""


@dataclass(frozen=True, slots=True)
class Content:
    path: str
    offset: int | None
    """Where the bytes start in ``path`` (a pack); None: ``path`` holds exactly them."""
    segments: tuple[Segment, ...]

    @property
    def blocks(self) -> int:
        return sum(n for _, n in self.segments)


def probe(entry_path: str, source: str, offset: int | None, size: int) -> Content:
    """The data segments of ``size`` bytes at ``offset`` in ``source`` (a regular file
    of exactly ``size`` bytes when ``offset`` is None)."""
    try:
        st = os.lstat(source)
    except OSError as err:
        raise BadTree(entry_path, f"its content {source!r} cannot be read "
                                  f"({err.strerror})") from err
    start = offset or 0
    if not stat.S_ISREG(st.st_mode) or (st.st_size != size if offset is None
                                        else st.st_size < start + size):
        raise BadTree(entry_path, f"its content {source!r} holds {st.st_size} "
                                  f"bytes, the entry declares {size}"
                                  + ("" if offset is None else f" from {offset}"))
    total = -(-size // BLOCK_SIZE)
    if st.st_blocks * _SECTOR >= st.st_size:    # no room for holes: dense
        return Content(source, offset, ((0, total),) if total else ())
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return Content(source, offset, tuple(_data_segments(fd, start, size, total)))
    finally:
        os.close(fd)


def _data_segments(fd: int, start: int, size: int, total: int) -> list[Segment]:
    """Segments of the ``size`` bytes at ``start``, in blocks counted from ``start``: a
    block that holds any data is data."""
    segments: list[Segment] = []
    pos, stop = start, start + size
    while pos < stop:
        try:
            begin = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                break                       # only a hole remains
            raise
        if begin >= stop:
            break
        end = min(os.lseek(fd, begin, os.SEEK_HOLE), stop)
        first, last = (begin - start) // BLOCK_SIZE, min(total, -(-(end - start) // BLOCK_SIZE))
        if segments and segments[-1][0] + segments[-1][1] >= first:
            prev = segments.pop()
            first = prev[0]
        segments.append((first, last - first))
        pos = end
    return segments


def write_at(fd: int, data: bytes, offset: int) -> None:
    """pwrite all of ``data`` at ``offset``."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
