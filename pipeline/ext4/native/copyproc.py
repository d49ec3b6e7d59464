"""File data copied into the image by a helper process, beside the writer, not under its GIL.

The writer places every file's data before it builds the directories and
inode tables; the copies (``copyjobs``) are a few syscalls per file. Run on
threads of the writer's own process, each of those syscalls had to win the
GIL back from the thread building metadata, so the copies mostly waited
until the metadata was done. A separate process copies truly in parallel:
``CopyProcess`` starts ``copyjobs`` as a script (``python -I -S``: only the
standard library, nothing from the environment) when the writer starts,
hands it the image's descriptor, sends it the whole job list on stdin once
the data is placed, and ``wait`` collects its verdict. Where no helper can
be started, ``wait`` copies in this process instead.
"""

from __future__ import annotations

import subprocess
import sys
import threading

from pipeline.ext4.native import copyjobs
from pipeline.ext4.native.copyjobs import (
    SPARSE_STATUS,
    CopyFailed,
    SparseContent,
    copy_jobs,
    encode_jobs,
)

__all__ = ["CopyProcess"]


class CopyProcess:
    """The helper for one image: ``start`` early, ``send`` the jobs once, ``wait`` last.

    Leaving the ``with`` block without ``wait`` (an error elsewhere) kills the helper,
    so nothing writes into the image after the writer gave up on it."""

    def __init__(self, dst: int, *, dense: bool) -> None:
        self._dst = dst
        self._dense = dense
        self._proc: subprocess.Popen[bytes] | None = None
        self._jobs = b""
        self._sender: threading.Thread | None = None

    def __enter__(self) -> CopyProcess:
        script = copyjobs.__file__
        if sys.executable and script.endswith(".py"):
            argv = [sys.executable, "-I", "-S", script, str(self._dst),
                    "dense" if self._dense else "probed"]
            try:
                self._proc = subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL, pass_fds=(self._dst,), close_fds=True)
            except OSError:
                self._proc = None           # copied in this process by wait()
        return self

    def send(self, jobs: list[bytes], first: int, end: int) -> None:
        """Hand over every job; ``first``-``end`` is the byte range their data lies in.

        Written by a thread: the list outgrows the pipe, and on a busy machine the
        helper may not be scheduled to drain it for a while; the writer goes on."""
        self._jobs = encode_jobs(jobs, first, end)
        if self._proc is not None:
            self._sender = threading.Thread(target=_send, args=(self._proc, self._jobs),
                                            name="ext4-copy-jobs", daemon=True)
            self._sender.start()

    def wait(self) -> None:
        """Return once every byte is copied; raise ``CopyFailed`` for a bad job."""
        proc, self._proc = self._proc, None
        if proc is None:
            copy_jobs(self._jobs, self._dst, dense=self._dense)
            return
        if self._sender is not None:
            self._sender.join()
        assert proc.stdout is not None
        report = proc.stdout.read()
        proc.stdout.close()
        if proc.wait() == SPARSE_STATUS:
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
            if self._sender is not None:
                self._sender.join()         # its write fails once the helper is gone
            for pipe in (self._proc.stdin, self._proc.stdout):
                if pipe is not None:
                    pipe.close()


def _send(proc: subprocess.Popen[bytes], data: bytes) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except (BrokenPipeError, ValueError):
        pass                                # the helper died: wait() reports it


