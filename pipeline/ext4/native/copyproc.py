"""File data into the image from a helper process: copies beside the writer, not under its GIL.

The writer places every file's data before it builds the directories and
inode tables; the bytes are then moved by ``os.copy_file_range`` (in the
kernel; ``pread``/``pwrite`` through a 1 MiB buffer where the kernel
refuses), a few syscalls per file. Run on threads of the writer's own
process, each of those syscalls has to win the GIL back from the thread
building metadata, so the copies mostly waited until the metadata was done.
A separate process copies truly in parallel: ``CopyProcess`` starts this
file as a script (``python -I -S``: only the standard library, nothing
from the environment) with the image's descriptor, sends it the whole job
list on stdin once the data is placed, and ``wait`` collects its verdict.
Where no helper can be started, ``wait`` copies in this process instead.

Jobs are ``source path NUL "size logical:physical:count ..." NUL`` records;
the helper reports the first failure as ``index NUL message`` on stdout and
exits 1. Trusts nothing about a content file but its bytes: a size that
disagrees with its job, or a file that shrinks while copied, is refused.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import subprocess

__all__ = ["CopyProcess", "CopyFailed", "SparseContent", "encode_job", "copy_jobs"]

_BLOCK = 4096
_SECTOR = 512
_COPY_CHUNK = 64 << 20
_BUFFER = 1 << 20
_SPARSE = 3                                 # the helper's exit status for SparseContent
_NO_COPY_RANGE = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF}

Placed = Sequence[tuple[int, int, int]]
"""(file block, image block, blocks) runs of one file."""


class SparseContent(Exception):
    """A content file taken to be dense has holes: place its data again, probed."""


class CopyFailed(Exception):
    """A job could not be copied: ``index`` of the job (-1: the helper failed), what
    went wrong."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message


def encode_job(source: str, size: int, placed: Placed) -> bytes:
    runs = " ".join(f"{lo}:{ph}:{n}" for lo, ph, n in placed)
    return os.fsencode(source) + b"\0" + f"{size} {runs}".encode("ascii") + b"\0"


def copy_jobs(data: bytes, dst: int, *, dense: bool) -> None:
    """Copy every job of ``data`` (``encode_job`` records) into ``dst``; with ``dense``,
    raise ``SparseContent`` for a source with fewer blocks than its size needs."""
    fields = data.split(b"\0")
    for index in range(len(fields) // 2):
        source, spec = fields[2 * index], fields[2 * index + 1].split()
        try:
            _copy_file(source, int(spec[0]), spec[1:], dst, dense)
        except _Refused as err:
            raise CopyFailed(index, str(err)) from None
        except OSError as err:
            raise CopyFailed(index, f"its content cannot be copied ({err.strerror})") from err


class _Refused(Exception):
    pass


def _copy_file(source: bytes, size: int, runs: list[bytes], dst: int, dense: bool) -> None:
    # O_NONBLOCK: a FIFO in place of a content file must not hang the build.
    try:
        src = os.open(source, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as err:
        raise _Refused(f"its content {os.fsdecode(source)!r} cannot be read "
                       f"({err.strerror})") from err
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise _Refused(f"its content {os.fsdecode(source)!r} holds {st.st_size} bytes, "
                           f"the entry declares {size}")
        if dense and st.st_blocks * _SECTOR < size:
            raise SparseContent()
        for run in runs:
            logical, physical, count = map(int, run.split(b":"))
            offset = logical * _BLOCK
            _copy(src, dst, offset, physical * _BLOCK, min(count * _BLOCK, size - offset))
    finally:
        os.close(src)


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


class CopyProcess:
    """The helper for one image: ``start`` early, ``send`` the jobs once, ``wait`` last.

    Leaving the ``with`` block without ``wait`` (an error elsewhere) kills the helper,
    so nothing writes into the image after the writer gave up on it."""

    def __init__(self, dst: int, *, dense: bool) -> None:
        self._dst = dst
        self._dense = dense
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs = b""

    def __enter__(self) -> CopyProcess:
        # Imported here: the helper itself never needs it.
        import subprocess
        script = __file__
        if sys.executable and script.endswith(".py"):
            try:
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", script, str(self._dst),
                     "dense" if self._dense else "probed"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    pass_fds=(self._dst,), close_fds=True)
            except OSError:
                self._proc = None           # copied in this process by wait()
        return self

    def send(self, jobs: list[bytes]) -> None:
        self._jobs = b"".join(jobs)
        if self._proc is not None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.write(self._jobs)
                self._proc.stdin.close()
            except BrokenPipeError:
                pass                        # the helper died: wait() reports it

    def wait(self) -> None:
        """Return once every byte is copied; raise ``CopyFailed`` for a bad job."""
        proc, self._proc = self._proc, None
        if proc is None:
            copy_jobs(self._jobs, self._dst, dense=self._dense)
            return
        assert proc.stdout is not None
        report = proc.stdout.read()
        proc.stdout.close()
        if proc.wait() == _SPARSE:
            raise SparseContent()
        if proc.returncode != 0:
            index, _, message = report.partition(b"\0")
            if not index:
                raise CopyFailed(-1, f"the helper process copying file data into the image "
                                     f"exited with status {proc.returncode}")
            raise CopyFailed(int(index), message.decode("utf-8", "replace"))

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()


def _main() -> int:
    dst, dense = int(sys.argv[1]), sys.argv[2] == "dense"
    data = sys.stdin.buffer.read()
    try:
        copy_jobs(data, dst, dense=dense)
    except SparseContent:
        return _SPARSE
    except CopyFailed as failed:
        sys.stdout.buffer.write(f"{failed.index}".encode() + b"\0" + failed.message.encode())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
