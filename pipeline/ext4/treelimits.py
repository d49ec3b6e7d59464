"""What mkfs.ext4 -d (e2fsprogs 1.47.0) cannot take: refused before it runs.

Measured on this project's build host (DESIGN.md, docs/security.md):

- Depth. A tree about 200 directories deep whose path passes ~2 KiB makes
  mkfs.ext4 abort with heap corruption (``realloc(): invalid next size``):
  ``a/`` x 1,024, ``bb/`` x 700 and ``eeeeeeeeeee/`` x 200 crash, while 128
  levels with a 4,096-byte path, and 1,000 levels of ``a/`` (2,000 bytes),
  build. ``MAX_DEPTH`` keeps every tree inside the proven-safe region; no
  real image comes near it (deep node_modules trees reach ~40).
- Directory size. mkfs.ext4 inserts directory entries one by one, each
  insert scanning the directory: quadratic. 30,000 empty files in one
  directory took 113 s here, 100,000 over 12 minutes. ``MAX_DIR_ENTRIES``
  accepts the largest real directories (30,000 entries) and bounds the
  worst case to a few minutes instead of an hour.

Both are checked on the flat image's entries, the tree exactly as mkfs will
see it (symlinked directories already resolved by flatten).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pipeline.errors import Ext4Error
from pipeline.flat.image import FlatEntry

__all__ = ["MAX_DEPTH", "MAX_DIR_ENTRIES", "check_tree"]

MAX_DEPTH = 128
"""Path components below the root (mkfs.ext4 1.47.0 crashes on deep, long paths)."""
MAX_DIR_ENTRIES = 40_000
"""Entries in one directory (mkfs.ext4's directory insert is quadratic)."""


def check_tree(entries: Iterable[FlatEntry], *, max_depth: int = MAX_DEPTH,
               max_dir_entries: int = MAX_DIR_ENTRIES) -> None:
    """Raise Ext4Error naming the first path too deep, or the largest directory too big."""
    sizes: Counter[str] = Counter()
    for entry in entries:
        if not entry.path:
            continue
        depth = entry.path.count("/") + 1
        if depth > max_depth:
            shown = entry.path[:120].encode("unicode_escape").decode("ascii")
            raise Ext4Error(f"path '{shown}'... is {depth} directories deep, more than the"
                            f" {max_depth} mkfs.ext4 handles safely (deeper trees crash"
                            " e2fsprogs 1.47.0); the image cannot be built with mkfs.ext4")
        sizes[entry.path.rpartition("/")[0]] += 1
    if not sizes:
        return
    parent, count = sizes.most_common(1)[0]
    if count > max_dir_entries:
        shown = ("/" + parent).encode("unicode_escape").decode("ascii")[:200]
        raise Ext4Error(f"directory '{shown}' holds {count} entries, more than the"
                        f" {max_dir_entries} per directory mkfs.ext4 builds in reasonable time"
                        " (its directory insert is quadratic); the image cannot be built with"
                        " mkfs.ext4")
