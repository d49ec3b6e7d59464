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

- Extended attributes. ext4 stores a name's suffix (after its prefix's
  index) in a one-byte length: debugfs cuts a longer one, so two names can
  merge while e2fsck passes. A value must fit, with its entry, in the one
  xattr block an inode may have beside its body. Both are refused here,
  naming the path and the attribute, instead of being stored wrong.

All are checked on the flat image's entries, the tree exactly as mkfs will
see it (symlinked directories already resolved by flatten).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from pipeline.base.escape import escape_text
from pipeline.errors import Ext4Error
from pipeline.ext4.disk import XATTR_BLOCK_HEADER, XATTR_ENTRY, xattr_disk_name
from pipeline.ext4.size import BLOCK_SIZE
from pipeline.flat.image import FlatEntry

# Only the mkfs builder has the directory limit: the native writer indexes large
# directories itself (an htree), 100,000 entries in seconds.
_NATIVE = 'builder = "native" (the default) for this image'

__all__ = ["MAX_DEPTH", "MAX_DIR_ENTRIES", "MAX_XATTR_NAME_BYTES", "check_tree",
           "max_xattr_value_bytes"]

MAX_DEPTH = 128
"""Path components below the root (mkfs.ext4 1.47.0 crashes on deep, long paths)."""
MAX_DIR_ENTRIES = 40_000
"""Entries in one directory (mkfs.ext4's directory insert is quadratic)."""
MAX_XATTR_NAME_BYTES = 255
"""An xattr name's suffix after its prefix index (e_name_len is one byte)."""
_XATTR_END_MARKER = 4                      # the four zero bytes closing the entry table


def max_xattr_value_bytes(suffix_bytes: int) -> int:
    """The largest value one xattr of that name can have: alone in an xattr block."""
    entry = XATTR_ENTRY.size + ((suffix_bytes + 3) & ~3)
    return (BLOCK_SIZE - XATTR_BLOCK_HEADER - entry - _XATTR_END_MARKER) & ~3


def _check_xattrs(entry: FlatEntry) -> None:
    for name, value in entry.xattrs:
        disk = xattr_disk_name(name)
        if disk is None:
            continue            # no ext4 encoding at all: the fixup refuses it by name
        where = f"'/{escape_text(entry.path)}': extended attribute '{escape_text(name)}'"
        if len(disk[1]) > MAX_XATTR_NAME_BYTES:
            raise Ext4Error(f"{where} has a {len(disk[1])}-byte name after its prefix, more"
                            f" than the {MAX_XATTR_NAME_BYTES} ext4 stores (it would be cut,"
                            " and two names could merge); drop or rename it in the image")
        limit = max_xattr_value_bytes(len(disk[1]))
        if len(value) > limit:
            raise Ext4Error(f"{where} has a {len(value)}-byte value, more than the {limit}"
                            " bytes one ext4 xattr block holds; drop it from the image")


def check_tree(entries: Iterable[FlatEntry], *, max_depth: int = MAX_DEPTH,
               max_dir_entries: int = MAX_DIR_ENTRIES) -> None:
    """Raise Ext4Error naming the first path too deep or xattr ext4 cannot hold, or the
    largest directory too big."""
    sizes: Counter[str] = Counter()
    for entry in entries:
        if entry.xattrs:
            _check_xattrs(entry)
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
                        f" mkfs.ext4: use {_NATIVE}")
