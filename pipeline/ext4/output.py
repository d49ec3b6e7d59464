"""What every build ends with: a world-readable image, hashed, published by rename.

Both builders write into a temporary file beside the output
(``ImageOutput``), hash it on a thread (``Sha256Thread``; mkfs: while e2fsck
reads it; native: while file data is still being copied, the copied ranges
hashed from the content files they come from; holes are hashed as zeros
without reading them), and rename it into place only when everything
passed: nothing is ever left half-written at the final path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.base.files import fsync_dir, temp_path

__all__ = ["ImageOutput", "Sha256Thread", "sha256_sparse", "OUTPUT_MODE", "CopiedRun"]

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
# 1.0-1.75 GB/s here whatever the chunk (128 KiB to 8 MiB measured alike), so
# the hash of a 309 MB image takes 0.18-0.3 s and can only be overlapped.
_HASH_CHUNK = 2 << 20
_ZEROS = memoryview(bytes(1 << 20))
# A content file is opened as the copy opens it: never through a link, and without
# blocking should a FIFO be in its place.
_SOURCE_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK

CopiedRun = tuple[int, int, str, int, int]
"""Bytes of an image written from a content file rather than from memory: (offset in the
image, bytes taken from the file, the file's path, where in the file they start, zero
bytes that follow them in the image). Runs of one image are given in increasing order."""


def sha256_sparse(path: Path, stop: threading.Event | None = None,
                  copied: Sequence[CopiedRun] = ()) -> str:
    """sha256 of a file, feeding holes (SEEK_HOLE) as zeros without reading them; the
    ranges ``copied`` names are hashed from their content files instead of the file,
    so the hash need not wait for their copy (the rest of the file must be final)."""
    with open(path, "rb", buffering=0) as f:
        return _sha256_fd(f.fileno(), stop, copied)


def _sha256_fd(fd: int, stop: threading.Event | None, copied: Sequence[CopiedRun]) -> str:
    h = hashlib.sha256()
    buf = memoryview(bytearray(_HASH_CHUNK))
    size = os.fstat(fd).st_size
    sources: dict[str, int] = {}
    pos = 0
    try:
        for offset, length, source, source_offset, zeros in copied:
            if offset < pos or offset + length + zeros > size:
                raise AssertionError(f"internal error: copied run at {offset} overlaps byte "
                                     f"{pos} or passes the end of the image")
            if not _hash_file(h, fd, pos, offset, buf, stop):
                return ""
            src = sources.get(source)
            if src is None:
                src = sources[source] = os.open(source, _SOURCE_FLAGS)
            if not _hash_file(h, src, source_offset, source_offset + length, buf, stop,
                              sparse=False):
                return ""
            _hash_zeros(h, zeros)
            pos = offset + length + zeros
        if not _hash_file(h, fd, pos, size, buf, stop):
            return ""
    finally:
        for src in sources.values():
            os.close(src)
    return h.hexdigest()


def _hash_zeros(h: Any, count: int) -> None:
    while count > 0:
        n = min(len(_ZEROS), count)
        h.update(_ZEROS[:n])
        count -= n


def _hash_file(h: Any, fd: int, pos: int, end: int, buf: memoryview,
               stop: threading.Event | None, *, sparse: bool = True) -> bool:
    """Hash bytes ``pos``-``end`` of ``fd`` (holes as zeros when ``sparse``); False when
    ``stop`` was set."""
    while pos < end:
        data = end
        if sparse:
            try:
                data = min(os.lseek(fd, pos, os.SEEK_DATA), end)
            except OSError as err:
                if err.errno != errno.ENXIO:
                    raise
                data = end                   # only a hole remains
            _hash_zeros(h, data - pos)
            pos = data
            if pos >= end:
                break
        hole = min(os.lseek(fd, pos, os.SEEK_HOLE), end) if sparse else end
        while pos < hole:
            if stop is not None and stop.is_set():
                return False                 # the build failed: nobody wants the digest
            n = os.preadv(fd, [buf[:min(_HASH_CHUNK, hole - pos)]], pos)
            if n <= 0:
                raise AssertionError(f"internal error: the file shrank while hashed (at "
                                     f"byte {pos} of {end})")
            h.update(buf[:n])
            pos += n
    return True


class Sha256Thread:
    """``sha256_sparse`` of an image on a worker thread: a finished one, or one whose
    ``copied`` runs are still being copied (everything else written)."""

    def __init__(self, path: Path, copied: Sequence[CopiedRun] = ()) -> None:
        self._stop = threading.Event()
        self._digest = ""
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(path, copied),
                                        name="ext4-sha256", daemon=True)
        self._thread.start()

    def _run(self, path: Path, copied: Sequence[CopiedRun]) -> None:
        try:
            self._digest = sha256_sparse(path, self._stop, copied)
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
