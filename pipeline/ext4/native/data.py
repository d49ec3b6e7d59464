"""File contents: which blocks hold data, and copying them into the image.

``probe`` opens a regular file's content (a layer store's numbered file),
checks that its size is the one its entry declares, and lists its data
segments in whole 4 KiB blocks: with SEEK_DATA/SEEK_HOLE when the file has
fewer blocks on disk than its size (a sparse file), else the whole file in
one segment. A hole of the source stays a hole of the image (no extent, no
block); layer stores are written densely, so images built from them do not
depend on the host filesystem.

The bytes themselves are moved by ``copyproc``, in a helper process.

Trusts nothing about the content file: a size that disagrees with the
entry, or anything but a regular file, is refused.
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
    segments: tuple[Segment, ...]

    @property
    def blocks(self) -> int:
        return sum(n for _, n in self.segments)


def probe(entry_path: str, source: str, size: int) -> Content:
    """The data segments of ``source``, which must be a regular file of ``size`` bytes."""
    try:
        st = os.lstat(source)
    except OSError as err:
        raise BadTree(entry_path, f"its content {source!r} cannot be read "
                                  f"({err.strerror})") from err
    if not stat.S_ISREG(st.st_mode) or st.st_size != size:
        raise BadTree(entry_path, f"its content {source!r} holds {st.st_size} "
                                  f"bytes, the entry declares {size}")
    total = -(-size // BLOCK_SIZE)
    if st.st_blocks * _SECTOR >= size:          # no room for holes: dense
        return Content(source, ((0, total),) if total else ())
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        return Content(source, tuple(_data_segments(fd, size, total)))
    finally:
        os.close(fd)


def _data_segments(fd: int, size: int, total: int) -> list[Segment]:
    segments: list[Segment] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as err:
            if err.errno == errno.ENXIO:
                break                       # only a hole remains
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        first, last = start // BLOCK_SIZE, min(total, -(-end // BLOCK_SIZE))
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
