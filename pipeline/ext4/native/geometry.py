"""Where every piece of filesystem metadata lives: block groups and their placement.

A ``Geometry`` is pure arithmetic on the block count, inodes per group and
the features: 32,768 blocks of 4 KiB per group, which groups carry a
superblock backup (all with ^sparse_super; else 0, 1 and powers of 3, 5, 7),
how many blocks the group descriptors take, how many descriptor blocks are
reserved for growth (``calc_reserved_gdt_blocks`` in mke2fs: room for 1024
times the size, at most one block of pointers), and the inode table size.

``place_metadata`` lays the bitmaps and inode tables of each flex group (16
groups, or 1 without flex_bg) one after another from the first block after
the first group's superblock backup, as mke2fs does, stepping over any
superblock backup region they would overlap. It refuses nothing: sizes were
checked by the size planner, and running off the end is an internal error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.ext4.native.inputs import has_super

__all__ = ["BLOCK_SIZE", "BLOCKS_PER_GROUP", "FLEX_GROUPS", "Geometry", "Placement",
           "make_geometry", "place_metadata"]

BLOCK_SIZE = 4096
BLOCKS_PER_GROUP = 8 * BLOCK_SIZE          # one bitmap block covers a group
FLEX_GROUPS = 16                           # mke2fs's default flex_bg size (log 4)
RESIZE_FACTOR = 1024                       # reserved descriptors allow 1024x growth
ADDRS_PER_BLOCK = BLOCK_SIZE // 4          # 32-bit block pointers in an indirect block
MAX_BLOCKS_32 = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Geometry:
    """The shape of the filesystem: groups, descriptor blocks, inode tables."""

    blocks: int
    groups: int
    inodes_per_group: int
    inode_size: int
    desc_size: int
    desc_blocks: int
    reserved_gdt: int
    itable_blocks: int
    """Inode table blocks per group."""
    flex_size: int
    sparse_super: bool

    @property
    def inodes(self) -> int:
        return self.inodes_per_group * self.groups

    def group_start(self, group: int) -> int:
        return group * BLOCKS_PER_GROUP

    def group_blocks(self, group: int) -> int:
        return min(BLOCKS_PER_GROUP, self.blocks - self.group_start(group))

    def has_super(self, group: int) -> bool:
        return has_super(group, self.sparse_super)

    def backup_blocks(self, group: int) -> int:
        """Blocks at the start of ``group`` for its superblock and descriptor copies."""
        return 1 + self.desc_blocks + self.reserved_gdt if self.has_super(group) else 0

    def backup_groups(self) -> list[int]:
        return [g for g in range(self.groups) if self.has_super(g)]


def make_geometry(blocks: int, inodes_per_group: int, *, inode_size: int, desc_size: int,
                  resize_inode: bool, flex_bg: bool, sparse_super: bool) -> Geometry:
    groups = math.ceil(blocks / BLOCKS_PER_GROUP)
    per_block = BLOCK_SIZE // desc_size
    desc_blocks = math.ceil(groups / per_block)
    reserved = 0
    if resize_inode:
        most = blocks * RESIZE_FACTOR if blocks < MAX_BLOCKS_32 // RESIZE_FACTOR \
            else MAX_BLOCKS_32
        want = math.ceil(math.ceil(most / BLOCKS_PER_GROUP) / per_block) - desc_blocks
        reserved = max(0, min(want, ADDRS_PER_BLOCK))
    itable = inodes_per_group * inode_size // BLOCK_SIZE
    if itable * BLOCK_SIZE != inodes_per_group * inode_size:
        raise AssertionError(f"internal error: {inodes_per_group} inodes per group do not "
                             f"fill whole inode table blocks")
    return Geometry(blocks=blocks, groups=groups, inodes_per_group=inodes_per_group,
                    inode_size=inode_size, desc_size=desc_size, desc_blocks=desc_blocks,
                    reserved_gdt=reserved, itable_blocks=itable,
                    flex_size=FLEX_GROUPS if flex_bg else 1, sparse_super=sparse_super)


@dataclass(frozen=True, slots=True)
class Placement:
    """Block numbers of each group's bitmaps and inode table, and every metadata run."""

    block_bitmap: tuple[int, ...]
    inode_bitmap: tuple[int, ...]
    inode_table: tuple[int, ...]
    used: tuple[tuple[int, int], ...]
    """(start, length) of every metadata run (backups included), sorted by start."""


def place_metadata(geo: Geometry) -> Placement:
    backups = [(geo.group_start(g), geo.backup_blocks(g)) for g in geo.backup_groups()]
    taken: list[tuple[int, int]] = list(backups)

    def place(cursor: int, length: int) -> int:
        """The first start >= cursor where ``length`` blocks touch no backup region."""
        moved = True
        while moved:
            moved = False
            for start, size in backups:
                if cursor < start + size and start < cursor + length:
                    cursor, moved = start + size, True
        if cursor + length > geo.blocks:
            raise AssertionError("internal error: the metadata does not fit the filesystem")
        return cursor

    block_bitmap = [0] * geo.groups
    inode_bitmap = [0] * geo.groups
    inode_table = [0] * geo.groups
    for first in range(0, geo.groups, geo.flex_size):
        members = range(first, min(first + geo.flex_size, geo.groups))
        cursor = geo.group_start(first) + geo.backup_blocks(first)
        cursor = place(cursor, len(members))
        for i, g in enumerate(members):
            block_bitmap[g] = cursor + i
        taken.append((cursor, len(members)))
        cursor = place(cursor + len(members), len(members))
        for i, g in enumerate(members):
            inode_bitmap[g] = cursor + i
        taken.append((cursor, len(members)))
        cursor += len(members)
        for g in members:
            cursor = place(cursor, geo.itable_blocks)
            inode_table[g] = cursor
            taken.append((cursor, geo.itable_blocks))
            cursor += geo.itable_blocks
    return Placement(tuple(block_bitmap), tuple(inode_bitmap), tuple(inode_table),
                     tuple(sorted(taken)))
