"""Files and directories that appear whole or not at all.

Every store (blobs, layer stores, flat images, the lock file, build records,
outputs) publishes the same way: write under a temporary name in the
destination's own directory, fsync, rename into place, fsync the directory
(a rename is only durable once its directory is). Temporary names
have one shape, ``.tmp-<final name>-<pid>-<random>``, so a crash leaves
nothing that could be mistaken for a finished entry and gc knows what to
sweep (``TEMP_PREFIX``). Blob downloads are the one other shape: their
``.partial`` files are resumable state owned by the blob cache.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from pathlib import Path

__all__ = ["fsync_dir", "temp_path", "write_atomic", "publish_dir", "remove_path", "file_stamp",
           "stamp_matches", "Stamp", "TEMP_PREFIX"]

TEMP_PREFIX = ".tmp-"
Stamp = tuple[int, int]
"""(size in bytes, mtime in ns): how a file we wrote is recognised unchanged."""
_NS_PER_S = 1_000_000_000


def fsync_dir(directory: Path) -> None:
    """fsync ``directory`` so the entries just created or renamed in it persist."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some filesystems (certain FUSE and network ones) refuse fsync on a
        # directory; there is nothing more to do for them.
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def temp_path(final: Path) -> Path:
    """A fresh temporary name beside ``final`` (not created)."""
    final = Path(final)
    return final.parent / f"{TEMP_PREFIX}{final.name}-{os.getpid()}-{secrets.token_hex(4)}"


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: temporary file beside it, fsync, rename, fsync dir."""
    path = Path(path)
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)              # whatever the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def publish_dir(tmp: Path, final: Path) -> bool:
    """Rename a finished directory into place; False (and ``tmp`` removed) when another
    process published ``final`` first, which for content-keyed entries is as good."""
    fsync_dir(tmp)
    try:
        os.rename(tmp, final)
    except OSError as err:
        if err.errno not in (errno.EEXIST, errno.ENOTEMPTY) or not final.is_dir():
            raise
        remove_path(tmp)
        return False
    fsync_dir(final.parent)
    return True


def remove_path(path: Path) -> None:
    """Remove a file, link or tree (read-only directories included), never following links."""
    if not os.path.lexists(path):
        return
    if os.path.isdir(path) and not os.path.islink(path):
        # Stores and flat images may hold read-only directories: make them
        # writable first so that rmtree can unlink their children.
        for dirpath, dirnames, _ in os.walk(path, followlinks=False):
            for name in dirnames:
                full = os.path.join(dirpath, name)
                if not os.path.islink(full):
                    os.chmod(full, 0o700)
        os.chmod(path, 0o700)
        shutil.rmtree(path)
    else:
        os.unlink(path)


def file_stamp(path: Path) -> Stamp | None:
    """The stamp of ``path``, or None when it does not exist."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns)


def stamp_matches(recorded: object, current: Stamp | None) -> bool:
    """True when ``current`` is the stamp ``recorded`` (a list or tuple from JSON or
    doit's database), at the precision the file's mtime still has.

    A cache restored by a tool that keeps whole seconds (``tar czf``, several CI
    cache actions) truncates every mtime: a file whose mtime is now a whole
    second matches a recorded stamp in the same second. A real rewrite gets a
    sub-second mtime from the kernel, so it still differs.
    """
    if current is None or not isinstance(recorded, (list, tuple)) or len(recorded) != 2:
        return False
    size, mtime = recorded
    if not isinstance(size, int) or not isinstance(mtime, int) or size != current[0]:
        return False
    if mtime == current[1]:
        return True
    return current[1] % _NS_PER_S == 0 and mtime // _NS_PER_S == current[1] // _NS_PER_S
