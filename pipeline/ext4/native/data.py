"""File contents: which blocks hold data, and copying them into the image.

``probe`` opens a regular file's content (a layer store's numbered file),
checks that its size is the one its entry declares, and lists its data
segments in whole 4 KiB blocks: with SEEK_DATA/SEEK_HOLE when the file has
fewer blocks on disk than its size (a sparse file), else the whole file in
one segment. A hole of the source stays a hole of the image (no extent, no
block); layer stores are written densely, so images built from them do not
depend on the host filesystem.

``Copier`` moves the bytes with ``os.copy_file_range`` (in the kernel,
reflinked where the filesystem can) in chunks of at most 64 MiB, falling
back to ``pread``/``pwrite`` through a 1 MiB buffer where the kernel refuses;
a file is never held in memory whole. Each file's blocks are allocated
before it is handed over, so files are copied by a few threads (the copies
release the GIL and write disjoint ranges) while the writer builds the
directories and inode tables: a rootfs is thousands of small files, where
the cost is one open and one copy call each.

Trusts nothing about the content file but its bytes: a size that disagrees
with the entry, or a file that shrinks while copied, is refused.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from pipeline.ext4.native.errors import BadTree
from pipeline.ext4.native.geometry import BLOCK_SIZE

__all__ = ["Segment", "Content", "CopyJob", "Copier", "probe", "write_at"]

_COPY_CHUNK = 64 << 20
_COPY_THREADS = 4                           # past this the disk, not the calls, is the limit
_BATCH = 64                                 # files per task: a task per file costs more
_BUFFER = 1 << 20
_SECTOR = 512
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}

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


@dataclass(frozen=True, slots=True)
class CopyJob:
    """One file's data: where it comes from and the (file block, disk block, blocks)
    runs it was given."""

    entry_path: str
    content: Content
    size: int
    placed: tuple[tuple[int, int, int], ...]


class Copier:
    """Copies files into the image on worker threads while the caller goes on placing
    metadata; leaving the ``with`` block waits for every copy (and raises the first
    failure), so no thread ever writes after the image is closed."""

    def __init__(self, dst: int) -> None:
        self._dst = dst
        self._pending: list[CopyJob] = []
        self._futures: list[Future[None]] = []
        self._pool = ThreadPoolExecutor(max_workers=max(1, min(_COPY_THREADS,
                                                               os.cpu_count() or 1)),
                                        thread_name_prefix="ext4-copy")

    def __enter__(self) -> Copier:
        return self

    def add(self, job: CopyJob) -> None:
        self._pending.append(job)
        if len(self._pending) >= _BATCH:
            self._submit()

    def _submit(self) -> None:
        if self._pending:
            self._futures.append(self._pool.submit(_copy_files, self._pending, self._dst))
            self._pending = []

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self._submit()
        else:
            for future in self._futures:
                future.cancel()
        self._pool.shutdown(wait=True)
        if exc_type is None:
            for future in self._futures:
                future.result()


def _copy_files(jobs: Sequence[CopyJob], dst: int) -> None:
    for job in jobs:
        _copy_file(job, dst)


def _copy_file(job: CopyJob, dst: int) -> None:
    entry_path, size = job.entry_path, job.size
    src = os.open(job.content.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if os.fstat(src).st_size != size:
            raise BadTree(entry_path, "its content changed size while the image was built")
        for logical, physical, count in job.placed:
            offset = logical * BLOCK_SIZE
            length = min(count * BLOCK_SIZE, size - offset)
            _copy(entry_path, src, dst, offset, physical * BLOCK_SIZE, length)
    finally:
        os.close(src)


def _copy(entry_path: str, src: int, dst: int, src_off: int, dst_off: int,
          length: int) -> None:
    buffer: bytearray | None = None
    while length > 0:
        n = 0
        if buffer is None:
            try:
                n = os.copy_file_range(src, dst, min(length, _COPY_CHUNK), src_off, dst_off)
            except OSError as err:
                if err.errno not in _NO_COPY_RANGE:
                    raise
                buffer = bytearray(_BUFFER)
                continue
        else:
            view = memoryview(buffer)[:min(length, _BUFFER)]
            n = os.preadv(src, [view], src_off)
            if n > 0:
                os.pwrite(dst, view[:n], dst_off)
        if n <= 0:
            raise BadTree(entry_path, "its content shrank while it was copied")
        src_off, dst_off, length = src_off + n, dst_off + n, length - n


def write_at(fd: int, data: bytes, offset: int) -> None:
    """pwrite all of ``data`` at ``offset``."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n
