"""Reading an ext4 image's primary superblock (kernel docs: ext4 "The Super Block").

Only the counts the builders check after a build and the geometry derived
builds grow from; the image is ours, but nothing is assumed beyond the
fields read here.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

__all__ = ["superblock_counts", "SUPERBLOCK_OFFSET"]

SUPERBLOCK_OFFSET = 1024      # the primary superblock always starts 1 KiB in


def superblock_counts(image: Path) -> dict[str, int]:
    """Counts from the primary superblock (ext4 disk layout, "The Super Block"), and the
    geometry derived builds grow from: inodes per group, group descriptor size."""
    with open(image, "rb") as f:
        sb = os.pread(f.fileno(), 1024, SUPERBLOCK_OFFSET)
    inodes, blocks_lo, r_lo, free_lo, free_inodes = struct.unpack_from("<5I", sb, 0)
    per_group, = struct.unpack_from("<I", sb, 0x28)
    is64 = struct.unpack_from("<I", sb, 0x60)[0] & 0x80
    blocks_hi, r_hi, free_hi = struct.unpack_from("<3I", sb, 0x150) if is64 else (0, 0, 0)
    return {"inodes": inodes, "blocks": blocks_lo | blocks_hi << 32,
            "reserved_blocks": r_lo | r_hi << 32, "free_blocks": free_lo | free_hi << 32,
            "free_inodes": free_inodes, "inodes_per_group": per_group,
            "desc_size": struct.unpack_from("<H", sb, 0xFE)[0] if is64 else 32}
