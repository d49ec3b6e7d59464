"""ext4 on-disk constants every builder and reader here shares, and the superblock reader.

References: the kernel's Documentation/filesystems/ext4/ (inodes, "Extended
Attributes", "The Super Block") and fs/ext4/xattr.h. ``superblock_counts``
reads only the counts the mkfs builder checks after a build; nothing is
assumed beyond the fields read.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

__all__ = ["superblock_counts", "xattr_disk_name", "SUPERBLOCK_OFFSET", "ROOT_INO",
           "FIRST_INO", "LOST_FOUND_INO", "XATTR_MAGIC", "XATTR_ENTRY", "XATTR_BLOCK_HEADER",
           "XATTR_PREFIXES", "XATTR_WRITTEN_PREFIXES"]

SUPERBLOCK_OFFSET = 1024      # the primary superblock always starts 1 KiB in
ROOT_INO = 2
FIRST_INO = 11                # inodes 1-10 are reserved; 11 is lost+found
LOST_FOUND_INO = FIRST_INO    # mke2fs makes lost+found first, as inode 11

# Extended attributes: the header magic of an xattr block (and of the in-inode
# area), one entry's fixed part (name_len, name_index, value_offs,
# value_inum, value_size, hash), and the block header's size.
XATTR_MAGIC = 0xEA020000
XATTR_ENTRY = struct.Struct("<BBHIII")
XATTR_BLOCK_HEADER = 32
# Name indexes (fs/ext4/xattr.h): the prefix is stored as a number.
XATTR_PREFIXES = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
                  4: "trusted.", 6: "security.", 7: "system.", 8: "system.richacl"}
# The prefixes a tree's xattrs are written under, in the order e2fsprogs
# matches them; any other name has no ext4 encoding here.
XATTR_WRITTEN_PREFIXES = (("user.", 1), ("system.posix_acl_access", 2),
                          ("system.posix_acl_default", 3), ("trusted.", 4), ("security.", 6))


def xattr_disk_name(name: str) -> tuple[int, bytes] | None:
    """(name index, suffix) as ext4 stores an xattr name, or None if ext4 cannot."""
    for prefix, index in XATTR_WRITTEN_PREFIXES:
        if name.startswith(prefix):
            suffix = name[len(prefix):]
            if index in (2, 3) and suffix:
                return None
            if index not in (2, 3) and not suffix:
                return None
            return index, os.fsencode(suffix)
    return None


def superblock_counts(image: Path) -> dict[str, int]:
    """Counts from the primary superblock (ext4 disk layout, "The Super Block")."""
    with open(image, "rb") as f:
        sb = os.pread(f.fileno(), 1024, SUPERBLOCK_OFFSET)
    inodes, blocks_lo, r_lo, free_lo, free_inodes = struct.unpack_from("<5I", sb, 0)
    is64 = struct.unpack_from("<I", sb, 0x60)[0] & 0x80
    blocks_hi, r_hi, free_hi = struct.unpack_from("<3I", sb, 0x150) if is64 else (0, 0, 0)
    return {"inodes": inodes, "blocks": blocks_lo | blocks_hi << 32,
            "reserved_blocks": r_lo | r_hi << 32, "free_blocks": free_lo | free_hi << 32,
            "free_inodes": free_inodes}
