"""Small files of a flat image read by their image path: /etc/passwd, /etc/group.

The runtime config resolves a user name through the image's own account
files (``oci.runtime.resolve_user``); they are read here from the flat
image's staging tree.

What it refuses to trust: the image. A path is read only if
``entries.jsonl`` says it and every parent are what they must be (regular
file under directories): an image whose ``/etc/passwd`` is a symlink (to
``/etc/shadow``, or out of the tree) is not followed, the lookup says
"absent". The file is opened with ``O_NOFOLLOW`` below the staging root
and read under a cap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.flat.image import ENTRIES_NAME, ROOTFS_NAME, FileType, read_entries

__all__ = ["read_flat_files", "FLAT_FILE_MAX_BYTES"]

# An /etc/passwd of ten thousand accounts is well under this.
FLAT_FILE_MAX_BYTES = 4 << 20


def read_flat_files(flat_dir: Path, paths: Sequence[str]) -> dict[str, bytes | None]:
    """The contents of ``paths`` (``etc/passwd``...) in the flat image; None where absent,
    not a regular file, behind a symlink, or larger than the cap."""
    wanted: set[str] = set()
    for path in paths:
        parts = path.split("/")
        wanted.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    kinds: dict[str, tuple[FileType, int]] = {}
    for entry in read_entries(flat_dir / ENTRIES_NAME):
        if entry.path in wanted:
            kinds[entry.path] = (entry.type, entry.size)
    found: dict[str, bytes | None] = {}
    for path in paths:
        parts = path.split("/")
        parents_ok = all(kinds.get("/".join(parts[:i]), (None, 0))[0] is FileType.DIRECTORY
                         for i in range(1, len(parts)))
        kind, size = kinds.get(path, (None, 0))
        if not parents_ok or kind is not FileType.REGULAR or size > FLAT_FILE_MAX_BYTES:
            found[path] = None
            continue
        found[path] = _read(flat_dir / ROOTFS_NAME, parts)
    return found


def _read(root: Path, parts: list[str]) -> bytes | None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in parts[:-1]:
            next_fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    with os.fdopen(file_fd, "rb") as f:
        return f.read(FLAT_FILE_MAX_BYTES)
