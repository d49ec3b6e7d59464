"""Copying file data into the image: the jobs, and the helper process's whole program.

Jobs are ``source path NUL "size[@offset] logical:physical:count ..." NUL``
records, in the order the writer placed the files, after a ``"first end" NUL`` header:
the byte range their data occupies, allocated with one ``posix_fallocate``
before anything is copied. ``copy_jobs`` writes around the page cache
(O_DIRECT, ``_Out``) where the image's filesystem allows: small files
gathered in one buffer, larger ones 4 MiB at a time. Elsewhere it moves each
file's bytes with ``os.copy_file_range`` (in the kernel; ``pread``/``pwrite``
through a 1 MiB buffer where the kernel refuses), in chunks of at most 64
MiB. A file is never held in memory whole. Run as a script (``python -I -S
copyjobs.py FD dense|probed``, started by ``copyproc``) it reads the jobs on
stdin, copies them into descriptor FD, and reports the first failure as
``index NUL message`` on stdout with exit status 1, or exit status 3 for a
content file that has holes although the writer took it to be dense. It
imports only what a bare interpreter has at hand, so it starts in ~10 ms.

A source with ``@offset`` is a layer store's pack, the file's bytes a range
of it: a pack is opened once and kept open for every job that names it.

Trusts nothing about a content file: it is opened without following links
and without blocking (a FIFO in its place must not hang the build), and
anything but a regular file of the declared size (a pack: at least as large
as the range), or one that shrinks while copied, is refused.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
import sys

__all__ = ["OUTPUT_ERRNOS", "OUTPUT_FAILED", "CopyFailed", "SparseContent", "encode_job",
           "encode_jobs", "copy_jobs", "SPARSE_STATUS"]

_BLOCK = 4096
_SECTOR = 512
_COPY_CHUNK = 64 << 20
_BUFFER = 1 << 20
_GATHER = 4 << 20                           # bytes of small files written at once
_GATHER_FILE = 256 << 10                    # larger files go by copy_file_range
_DIRECT_CHUNK = 4 << 20                     # bytes of a large file per direct write
_ZEROS = bytes(_BLOCK)
# O_NONBLOCK: a FIFO in place of a content file must not hang the build.
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
SPARSE_STATUS = 3                           # the helper's exit status for SparseContent
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}

Placed = list[tuple[int, int, int]]
"""(file block, image block, blocks) runs of one file."""


class SparseContent(Exception):
    """A content file taken to be dense has holes: place its data again, probed."""


# Errors only a write into the image gives; CopyFailed carries their errno with
# the index OUTPUT_FAILED (-1 is the helper itself failing).
OUTPUT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
OUTPUT_FAILED = -2


class CopyFailed(Exception):
    """A job could not be copied: ``index`` of the job (-1: the helper failed), what
    went wrong."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def encode_job(source: str, offset: int | None, size: int, placed: Placed) -> bytes:
    runs = " ".join(f"{lo}:{ph}:{n}" for lo, ph, n in placed)
    where = f"{size}" if offset is None else f"{size}@{offset}"
    return os.fsencode(source) + b"\0" + f"{where} {runs}".encode("ascii") + b"\0"


def encode_jobs(jobs: list[bytes], first: int, end: int) -> bytes:
    """What ``copy_jobs`` takes: the byte range ``first``-``end`` that holds the jobs'
    data (preallocated before copying), then the jobs."""
    return f"{first} {end}".encode("ascii") + b"\0" + b"".join(jobs)


def copy_jobs(data: bytes, dst: int, *, dense: bool, direct: bool = True) -> None:
    """Copy every job of ``data`` (``encode_jobs``) into ``dst``; with ``dense``, raise
    ``SparseContent`` for a source with fewer blocks than its size needs. ``direct``:
    around the page cache where the filesystem allows (else always through it).

    One thread: a second one, writing the same image, measured more CPU and no less
    time (buffered writes to one file take its inode lock in turn)."""
    span, _, data = data.partition(b"\0")
    first, end = map(int, span.split())
    if end > first:
        # Blocks allocated in one call before the writes: each page written then costs the
        # kernel a little less than a delayed allocation (5-10 % less CPU measured here).
        try:
            os.posix_fallocate(dst, first, end - first)
        except OSError:
            pass                            # the writes allocate, or fail and say why
    fields = data.split(b"\0")
    out = _Out(dst, direct=direct)
    gather = _Gather(out)
    done = _Done(out, first)
    packs = _Packs(gather, dense)
    try:
        for index in range(len(fields) // 2):
            source, spec = fields[2 * index], fields[2 * index + 1].split()
            try:
                size, at, offset = spec[0].partition(b"@")
                if at:
                    start, length = int(offset), int(size)
                    job_end = _copy_runs(packs.open(source, start + length), start, length,
                                         spec[1:], gather)
                else:
                    job_end = _copy_file(source, int(size), spec[1:], gather, dense)
                # Jobs lie in increasing order; small files wait in the gather buffer,
                # so what is done ends where that buffer starts.
                done.reached(gather.start if gather.fill else job_end)
            except _Refused as err:
                raise CopyFailed(index, str(err)) from None
            except OSError as err:
                if err.errno in OUTPUT_ERRNOS:
                    # The image's filesystem refused the write, whichever file was copied:
                    # the caller reports it as the output's (full, quota, file too large).
                    raise CopyFailed(OUTPUT_FAILED, str(err.errno)) from err
                raise CopyFailed(index, f"its content cannot be copied ({err.strerror})"
                                 ) from err
        gather.flush()
    finally:
        packs.close()
        out.close()
    done.finish(end)


class _Out:
    """Writes into the image: around the page cache (O_DIRECT) where the filesystem
    allows it, else through it.

    Nothing reads the image's file data back while it is built (the hash takes it from
    the content files), and page-cache pages cost: ~0.4 ms per MiB written where the
    memory was in use a moment before, 2.5-3 ms on a virtual machine whose host takes
    back the guest's free memory (free page reporting), where a direct write costs
    the copy into one reused buffer and the disk's time. Every write is whole blocks
    at block offsets from page-aligned buffers, as O_DIRECT requires; should the
    filesystem refuse one all the same (EINVAL), this write and every later one go
    through the page cache."""

    def __init__(self, dst: int, *, direct: bool = True) -> None:
        self.dst = dst
        self.direct = -1
        flag = getattr(os, "O_DIRECT", 0)
        if flag and direct:
            try:    # a descriptor of its own: O_DIRECT belongs to the open file
                self.direct = os.open(f"/proc/self/fd/{dst}", os.O_WRONLY | os.O_CLOEXEC | flag)
            except OSError:
                self.direct = -1            # no /proc, or a filesystem without O_DIRECT

    def write(self, view: memoryview, offset: int) -> None:
        """Write all of ``view`` at ``offset``."""
        at = 0
        while at < len(view):
            if self.direct >= 0:
                try:
                    at += os.pwrite(self.direct, view[at:], offset + at)
                    continue
                except OSError as err:
                    if err.errno != errno.EINVAL:
                        raise
                    self.close()            # refused after all: the page cache from here
            at += os.pwrite(self.dst, view[at:], offset + at)

    def close(self) -> None:
        if self.direct >= 0:
            os.close(self.direct)
            self.direct = -1


class _Done:
    """What is copied so far: the disk is started on it.

    The image ends with an fsync; left to it, ~200 MiB of dirty pages are all written
    then, the build waiting (0.06-0.26 s measured). ``sync_file_range`` with
    SYNC_FILE_RANGE_WRITE only queues the writeback and returns, so by the fsync little
    is left. Not in ``os``: called through ctypes, and skipped where that fails. The
    same as ``pipeline.base.writeback``, which this script cannot import (it runs with
    the standard library only). Written around the page cache, there is nothing to
    start: only what a refused direct write sent through it is."""

    _EVERY = 32 << 20

    def __init__(self, out: _Out, first: int) -> None:
        self.out, self.first, self.next = out, first, first + self._EVERY
        self.call = None
        try:
            import ctypes
            call = ctypes.CDLL(None, use_errno=True).sync_file_range
            call.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong,
                             ctypes.c_uint)
            self.call = call
        except (ImportError, OSError, AttributeError):
            pass

    def reached(self, upto: int) -> None:
        """Every job's bytes below ``upto`` are in the image."""
        if upto >= self.next:
            self.finish(upto)

    def finish(self, upto: int) -> None:
        if upto <= self.first:
            return
        if self.out.direct < 0 and self.call is not None \
                and self.call(self.out.dst, self.first, upto - self.first, 2):
            self.call = None                # SYNC_FILE_RANGE_WRITE refused: the fsync does it
        self.first, self.next = upto, upto + self._EVERY


class _Refused(Exception):
    pass


class _Gather:
    """Small files read into one buffer and written with one pwrite per stretch of
    consecutive blocks: a rootfs is thousands of small files placed one after another,
    and one large write costs the kernel less than a copy_file_range per file."""

    def __init__(self, out: _Out) -> None:
        self.out = out
        # O_NOATIME: a first read would otherwise dirty every source's inode
        # (relatime); only the files' owner may ask, so it is dropped on EPERM.
        self.open_flags = _OPEN_FLAGS | getattr(os, "O_NOATIME", 0)
        # Anonymous maps are page-aligned, as a direct write's buffer must be.
        self.view = memoryview(mmap.mmap(-1, _GATHER))
        # Large files written direct go through a buffer of their own, made once needed.
        self.large = memoryview(b"")
        self.start = self.fill = 0

    def add(self, src: int, src_off: int, size: int, dst_off: int) -> None:
        padded = -(-size // _BLOCK) * _BLOCK
        if dst_off != self.start + self.fill or self.fill + padded > _GATHER:
            self.flush()
            self.start = dst_off
        at = self.fill
        while at < self.fill + size:
            n = os.preadv(src, [self.view[at:self.fill + size]], src_off + at - self.fill)
            if n <= 0:
                raise _Refused("its content shrank while it was copied")
            at += n
        self.view[at:self.fill + padded] = _ZEROS[:self.fill + padded - at]
        self.fill += padded

    def flush(self) -> None:
        self.out.write(self.view[:self.fill], self.start)
        self.start = self.fill = 0


class _Packs:
    """The packs the jobs copy from, each opened and checked once."""

    def __init__(self, gather: _Gather, dense: bool) -> None:
        self.gather, self.dense = gather, dense
        self.fds: dict[bytes, tuple[int, int]] = {}     # path -> (fd, size)

    def open(self, source: bytes, end: int) -> int:
        """The descriptor of pack ``source``, which must hold at least ``end`` bytes."""
        if source not in self.fds:
            src = _open(source, self.gather)
            st = os.fstat(src)
            self.fds[source] = (src, st.st_size)
            if not stat.S_ISREG(st.st_mode):
                raise _Refused(f"its content {os.fsdecode(source)!r} is not a regular file")
            if self.dense and st.st_blocks * _SECTOR < st.st_size:
                raise SparseContent()
        src, size = self.fds[source]
        if size < end:
            raise _Refused(f"its content {os.fsdecode(source)!r} holds {size} bytes, the "
                           f"entry's range ends at {end}")
        return src

    def close(self) -> None:
        for src, _ in self.fds.values():
            os.close(src)
        self.fds.clear()


def _open(source: bytes, gather: _Gather) -> int:
    try:
        try:
            return os.open(source, gather.open_flags)
        except PermissionError:
            if gather.open_flags == _OPEN_FLAGS:
                raise
            gather.open_flags = _OPEN_FLAGS
            return os.open(source, _OPEN_FLAGS)
    except OSError as err:
        raise _Refused(f"its content {os.fsdecode(source)!r} cannot be read "
                       f"({err.strerror})") from err


def _copy_file(source: bytes, size: int, runs: list[bytes], gather: _Gather,
               dense: bool) -> int:
    """Copy one job whose source is a file of its own; returns the offset in the image
    where its last block ends."""
    src = _open(source, gather)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise _Refused(f"its content {os.fsdecode(source)!r} holds {st.st_size} bytes, "
                           f"the entry declares {size}")
        if dense and st.st_blocks * _SECTOR < size:
            raise SparseContent()
        return _copy_runs(src, 0, size, runs, gather)
    finally:
        os.close(src)


def _copy_runs(src: int, start: int, size: int, runs: list[bytes], gather: _Gather) -> int:
    """Copy the ``size`` bytes at ``start`` in ``src`` to their runs in the image; returns
    the offset in the image where the last block ends."""
    if len(runs) == 1 and size <= _GATHER_FILE:
        logical, physical, count = map(int, runs[0].split(b":"))
        if logical == 0:
            gather.add(src, start, size, physical * _BLOCK)
            return (physical + count) * _BLOCK
    physical = count = 0
    for run in runs:
        logical, physical, count = map(int, run.split(b":"))
        offset = logical * _BLOCK
        length = min(count * _BLOCK, size - offset)
        if gather.out.direct >= 0:
            _copy_direct(src, gather, start + offset, physical * _BLOCK, length)
        else:
            _copy(src, gather.out.dst, start + offset, physical * _BLOCK, length)
    return (physical + count) * _BLOCK


def _copy_direct(src: int, gather: _Gather, src_off: int, dst_off: int, length: int) -> None:
    """Copy through the page-aligned buffer, written around the page cache; the last
    block is padded with zeros (what the image holds past a file's end anyway)."""
    if not gather.large:
        gather.large = memoryview(mmap.mmap(-1, _DIRECT_CHUNK))
    view = gather.large
    while length > 0:
        want = min(length, len(view))
        got = 0
        while got < want:
            n = os.preadv(src, [view[got:want]], src_off + got)
            if n <= 0:
                raise _Refused("its content shrank while it was copied")
            got += n
        padded = -(-want // _BLOCK) * _BLOCK
        view[want:padded] = _ZEROS[:padded - want]
        gather.out.write(view[:padded], dst_off)
        src_off, dst_off, length = src_off + want, dst_off + want, length - want


def _copy(src: int, dst: int, src_off: int, dst_off: int, length: int) -> None:
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
            raise _Refused("its content shrank while it was copied")
        src_off, dst_off, length = src_off + n, dst_off + n, length - n


def _main() -> int:
    dst, dense = int(sys.argv[1]), sys.argv[2] == "dense"
    data = sys.stdin.buffer.read()
    try:
        copy_jobs(data, dst, dense=dense)
    except SparseContent:
        return SPARSE_STATUS
    except CopyFailed as failed:
        sys.stdout.buffer.write(f"{failed.index}".encode() + b"\0" + failed.message.encode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
