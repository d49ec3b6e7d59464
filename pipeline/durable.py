"""Making a rename or a new directory entry survive a crash: fsync of the directory.

Every store in the cache (blobs, layer stores, flat images, base images, the
lock file, outputs) publishes by writing a temporary name and renaming it;
the rename is only durable once the directory holding it is fsynced.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["fsync_dir"]


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
