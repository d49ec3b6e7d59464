"""What every build ends with: a world-readable image, hashed, published by rename.

Both builders write into a temporary file beside the output
(``ImageOutput``), hash it on a thread (``Sha256Thread``; mkfs: while e2fsck
reads it; native: behind the copy of file data, as far as ``Ready`` says is
final; holes are hashed as zeros without reading them), and rename it into
place only when everything passed: nothing is ever left half-written at the
final path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from pipeline.base.files import fsync_dir, temp_path

__all__ = ["ImageOutput", "Sha256Thread", "sha256_sparse", "OUTPUT_MODE", "Ready"]

# Images are build products anyone may read (mkstemp would leave 0600).
OUTPUT_MODE = 0o644


class ImageOutput:
    """A temporary image file beside ``output``: ``publish()`` renames it into place,
    leaving the ``with`` block any other way removes it."""

    def __init__(self, output: Path) -> None:
        self.output = Path(output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.output.unlink(missing_ok=True)   # a failed build leaves nothing at the final path
        self.path = temp_path(self.output)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                          OUTPUT_MODE)
        os.fchmod(self.fd, OUTPUT_MODE)       # whatever the umask
        self._published = False

    def __enter__(self) -> ImageOutput:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        os.close(self.fd)
        if not self._published:
            self.path.unlink(missing_ok=True)

    def publish(self) -> None:
        """Make the finished image durable under its final name."""
        os.fsync(self.fd)
        os.replace(self.path, self.output)
        self._published = True
        fsync_dir(self.output.parent)


# Reads into one reused buffer (no bytes object per read); hashlib releases
# the GIL for each update. sha256 itself is the limit: with SHA-NI it runs at
# 1.0-1.1 GB/s here whatever the chunk (128 KiB to 8 MiB measured alike), so
# the hash of a 261 MiB image takes ~0.25 s and can only be overlapped.
_HASH_CHUNK = 2 << 20
_ZEROS = memoryview(bytes(1 << 20))


Ready = Callable[[int], int]
"""Blocks until the bytes from the given offset on are final, and returns the offset up
to which they are (more than the one given): for hashing a file still being written."""


def sha256_sparse(path: Path, stop: threading.Event | None = None,
                  ready: Ready | None = None) -> str:
    """sha256 of a file, feeding holes (SEEK_HOLE) as zeros without reading them;
    with ``ready``, each range is read only once ``ready`` says it is final."""
    with open(path, "rb", buffering=0) as f:
        return _sha256_fd(f.fileno(), stop, ready)


def _sha256_fd(fd: int, stop: threading.Event | None, ready: Ready | None) -> str:
    h = hashlib.sha256()
    buf = memoryview(bytearray(_HASH_CHUNK))
    size = os.fstat(fd).st_size
    final = size if ready is None else 0    # without ``ready`` the whole file is final
    pos = 0
    while pos < size:
        if pos >= final:
            assert ready is not None
            final = min(size, ready(pos))
            if final <= pos:
                raise AssertionError(f"internal error: no progress past byte {pos}")
        try:
            data = min(os.lseek(fd, pos, os.SEEK_DATA), final)
        except OSError as err:
            if err.errno != errno.ENXIO:
                raise
            data = final                     # only a hole remains (so far)
        while pos < data:
            n = min(len(_ZEROS), data - pos)
            h.update(_ZEROS[:n])
            pos += n
        if pos >= final:
            continue
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), final)
        while pos < hole:
            if stop is not None and stop.is_set():
                return ""                    # the build failed: nobody wants the digest
            n = os.preadv(fd, [buf[:min(_HASH_CHUNK, hole - pos)]], pos)
            if n <= 0:
                raise AssertionError("internal error: the image shrank while hashing")
            h.update(buf[:n])
            pos += n
    return h.hexdigest()


class Sha256Thread:
    """``sha256_sparse`` of an image on a worker thread: a finished one, or with ``ready``
    one still being written."""

    def __init__(self, path: Path, ready: Ready | None = None) -> None:
        self._stop = threading.Event()
        self._digest = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path, ready),
                                        name="ext4-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: Path, ready: Ready | None) -> None:
        try:
            self._digest = sha256_sparse(path, self._stop, ready)
        except BaseException as err:     # handed to the caller in result()
            self._error = err

    def result(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._digest

    def cancel(self) -> None:
        """Stop early (the build failed) and wait, so no thread reads a removed file."""
        self._stop.set()
        self._thread.join()
