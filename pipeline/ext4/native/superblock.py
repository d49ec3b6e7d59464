"""The superblock, its backups and the group descriptors (ext4 disk layout, "The Super
Block", "Block Group Descriptors"), and the resize inode's reserved descriptor blocks.

``Superblock`` holds the filesystem-wide values; ``encode`` packs the copy
for one group (``s_block_group_nr`` differs) with its crc32c.
``encode_descriptors`` packs every group's descriptor (32 or 64 bytes) with
bitmap checksums and the descriptor checksum. ``resize_blocks`` builds what
``ext2fs_create_resize_inode`` makes so that resize2fs can add descriptor
blocks: a double-indirect block listing the primary reserved GDT blocks,
each listing its backups' block numbers.

Times are the fixed FS_EPOCH the mkfs builder pins; nothing here reads a clock.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.ext4.native.checksum import Checksums, ext4_crc
from pipeline.ext4.native.geometry import BLOCK_SIZE, BLOCKS_PER_GROUP, Geometry

__all__ = ["Superblock", "encode_superblock", "GroupCounts", "encode_descriptors",
           "resize_blocks", "FEATURE_BITS", "SUPERBLOCK_OFFSET"]

SUPERBLOCK_OFFSET = 1024
_MAGIC = 0xEF53
_STATE_CLEAN = 1
_ERRORS_CONTINUE = 1
_REV_DYNAMIC = 1
_FIRST_INO = 11
_LOG_BLOCK = 2                                # 1024 << 2
_LOG_FLEX = 4                                 # 16 groups per flex group
_FLAGS_SIGNED_HASH = 0x1
_HASH_HALF_MD4 = 1
_DEFM_XATTR_USER_ACL = 0x4 | 0x8              # mke2fs.conf default_mntopts = acl,user_xattr
_CSUM_CRC32C = 1
_NO_MAX_MOUNTS = 0xFFFF                       # -1: enable_periodic_fsck = 0
_BG_ITABLE_ZEROED = 0x4
# feature name -> (word: 0 compat, 1 incompat, 2 ro_compat, bit)
FEATURE_BITS = {
    "has_journal": (0, 0x4), "ext_attr": (0, 0x8), "resize_inode": (0, 0x10),
    "dir_index": (0, 0x20),
    "filetype": (1, 0x2), "extent": (1, 0x40), "64bit": (1, 0x80), "flex_bg": (1, 0x200),
    "metadata_csum_seed": (1, 0x2000), "large_dir": (1, 0x4000),
    "sparse_super": (2, 0x1), "large_file": (2, 0x2), "huge_file": (2, 0x8),
    "dir_nlink": (2, 0x20), "extra_isize": (2, 0x40), "metadata_csum": (2, 0x400),
}


@dataclass(frozen=True, slots=True)
class Superblock:
    geo: Geometry
    features: frozenset[str]
    free_blocks: int
    free_inodes: int
    reserved_blocks: int
    uuid: bytes
    hash_seed: bytes
    label: bytes
    epoch: int
    journal_blocks: bytes
    """s_jnl_blocks: the journal inode's i_block, i_size_high, i_size (68 bytes), or zeros."""
    min_extra_isize: int


def encode_superblock(sb: Superblock, group: int, csums: Checksums) -> bytes:
    geo = sb.geo
    words = [0, 0, 0]
    for name in sb.features:
        word, bit = FEATURE_BITS[name]
        words[word] |= bit
    out = bytearray(1024)
    struct.pack_into("<13I", out, 0, geo.inodes, geo.blocks & 0xFFFFFFFF,
                     sb.reserved_blocks & 0xFFFFFFFF, sb.free_blocks & 0xFFFFFFFF,
                     sb.free_inodes, 0, _LOG_BLOCK, _LOG_BLOCK, BLOCKS_PER_GROUP,
                     BLOCKS_PER_GROUP, geo.inodes_per_group, 0, sb.epoch)
    # mnt_count, max_mnt_count, magic, state, errors, minor_rev, lastcheck, checkinterval,
    # creator_os, rev_level, def_resuid, def_resgid, first_ino, inode_size, block_group_nr
    struct.pack_into("<HHHHHHIIIIHHIHH", out, 0x34, 0, _NO_MAX_MOUNTS, _MAGIC, _STATE_CLEAN,
                     _ERRORS_CONTINUE, 0, sb.epoch, 0, 0, _REV_DYNAMIC, 0, 0, _FIRST_INO,
                     geo.inode_size, group)
    struct.pack_into("<3I", out, 0x5C, *words)
    out[0x68:0x78] = sb.uuid
    out[0x78:0x88] = sb.label.ljust(16, b"\0")
    struct.pack_into("<H", out, 0xCE, geo.reserved_gdt)
    if "has_journal" in sb.features:
        struct.pack_into("<I", out, 0xE0, 8)
    out[0xEC:0xFC] = sb.hash_seed
    struct.pack_into("<BBH", out, 0xFC, _HASH_HALF_MD4,
                     1 if "has_journal" in sb.features else 0,
                     geo.desc_size if "64bit" in sb.features else 0)
    struct.pack_into("<II", out, 0x100, _DEFM_XATTR_USER_ACL, 0)
    struct.pack_into("<I", out, 0x108, sb.epoch)
    out[0x10C:0x150] = sb.journal_blocks
    struct.pack_into("<3I", out, 0x150, geo.blocks >> 32, sb.reserved_blocks >> 32,
                     sb.free_blocks >> 32)
    struct.pack_into("<HHI", out, 0x15C, sb.min_extra_isize, sb.min_extra_isize,
                     _FLAGS_SIGNED_HASH)
    if "flex_bg" in sb.features:
        out[0x174] = _LOG_FLEX
    if csums.enabled:
        out[0x175] = _CSUM_CRC32C
        if "metadata_csum_seed" in sb.features:
            struct.pack_into("<I", out, 0x270, csums.fs_seed)
        struct.pack_into("<I", out, 0x3FC, ext4_crc(0xFFFFFFFF, out[:0x3FC]))
    return bytes(out)


@dataclass(frozen=True, slots=True)
class GroupCounts:
    block_bitmap: int
    inode_bitmap: int
    inode_table: int
    free_blocks: int
    free_inodes: int
    used_dirs: int
    itable_unused: int
    block_bitmap_csum: int
    inode_bitmap_csum: int


def encode_descriptors(geo: Geometry, groups: Sequence[GroupCounts],
                       csums: Checksums) -> bytes:
    size = geo.desc_size
    out = bytearray(geo.desc_blocks * BLOCK_SIZE)
    for g, c in enumerate(groups):
        off = g * size
        flags = _BG_ITABLE_ZEROED if csums.enabled else 0
        struct.pack_into("<IIIHHHHIHHHH", out, off, c.block_bitmap & 0xFFFFFFFF,
                         c.inode_bitmap & 0xFFFFFFFF, c.inode_table & 0xFFFFFFFF,
                         c.free_blocks & 0xFFFF, c.free_inodes & 0xFFFF, c.used_dirs & 0xFFFF,
                         flags, 0, c.block_bitmap_csum & 0xFFFF,
                         c.inode_bitmap_csum & 0xFFFF, c.itable_unused & 0xFFFF, 0)
        if size >= 64:
            struct.pack_into("<IIIHHHHIHH", out, off + 0x20, c.block_bitmap >> 32,
                             c.inode_bitmap >> 32, c.inode_table >> 32, c.free_blocks >> 16,
                             c.free_inodes >> 16, c.used_dirs >> 16, c.itable_unused >> 16, 0,
                             c.block_bitmap_csum >> 16, c.inode_bitmap_csum >> 16)
        if csums.enabled:
            assert csums.fs_seed is not None
            crc = ext4_crc(ext4_crc(csums.fs_seed, struct.pack("<I", g)), out[off:off + size])
            struct.pack_into("<H", out, off + 0x1E, crc & 0xFFFF)
    return bytes(out)


def resize_blocks(geo: Geometry, dind: int) -> list[tuple[int, bytes]]:
    """The blocks of the resize inode (7): the double-indirect block at ``dind`` and the
    primary reserved GDT blocks, each listing where its backups are."""
    per_block = BLOCK_SIZE // 4
    pointers = [0] * per_block
    blocks: list[tuple[int, bytes]] = []
    backups = [g for g in geo.backup_groups() if g > 0]
    for k in range(geo.reserved_gdt):
        primary = 1 + geo.desc_blocks + k
        pointers[(geo.desc_blocks + k) % per_block] = primary
        listed = [primary + g * BLOCKS_PER_GROUP for g in backups]
        blocks.append((primary, struct.pack(f"<{len(listed)}I", *listed).ljust(BLOCK_SIZE,
                                                                               b"\0")))
    blocks.append((dind, struct.pack(f"<{per_block}I", *pointers)))
    return blocks
