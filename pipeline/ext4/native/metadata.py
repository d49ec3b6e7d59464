"""The filesystem's own metadata, written last: inode tables, bitmaps, descriptors,
superblocks and the resize inode.

Everything is counted from what the writer really allocated (``UsedBlocks``)
and the inodes it really made, so the free counts, directory counts and
unused-inode counts are exact, as e2fsck's pass 5 demands. Inode tables are
built as one bytearray per group up to its last used inode (the rest of the
table is already zeros in the sparse image); each bitmap is checksummed into
its descriptor; the descriptors, then the superblock, are copied into every
group that carries a backup.

Trusts the writer's records; an inode number outside the table is an
internal error.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.ext4.native.alloc import UsedBlocks
from pipeline.ext4.native.checksum import Checksums, ext4_crc
from pipeline.ext4.native.data import write_at
from pipeline.ext4.native.geometry import BLOCK_SIZE, BLOCKS_PER_GROUP, Geometry, Placement
from pipeline.ext4.native.inode import EXTRA_ISIZE, GOOD_OLD_INODE_SIZE, InodeRecord, encode_inode
from pipeline.ext4.native.superblock import (
    SUPERBLOCK_OFFSET,
    GroupCounts,
    Superblock,
    encode_descriptors,
    encode_superblock,
    resize_blocks,
)

__all__ = ["FsParams", "Totals", "write_metadata", "RESIZE_INO"]

RESIZE_INO = 7
FIRST_INO = 11                              # 1-10 are reserved and counted in use
_RESIZE_MODE = 0o100600
_DIND = 13                                  # i_block[13]: the double-indirect pointer


@dataclass(frozen=True, slots=True)
class FsParams:
    geo: Geometry
    placement: Placement
    used: UsedBlocks
    features: frozenset[str]
    csums: Checksums
    uuid: bytes
    hash_seed: bytes
    label: bytes
    reserved_blocks: int
    epoch: int
    resize_dind: int
    journal: InodeRecord | None


@dataclass(frozen=True, slots=True)
class Totals:
    free_blocks: int
    free_inodes: int


def _resize_inode(p: FsParams) -> InodeRecord:
    geo = p.geo
    per_block = BLOCK_SIZE // 4
    backups = len([g for g in geo.backup_groups() if g > 0])
    i_block = bytearray(60)
    struct.pack_into("<I", i_block, 4 * _DIND, p.resize_dind)
    return InodeRecord(number=RESIZE_INO, mode=_RESIZE_MODE, uid=0, gid=0,
                       time_ns=p.epoch * 10**9,
                       size=(per_block * per_block + per_block + 12) * BLOCK_SIZE,
                       blocks=1 + geo.reserved_gdt * (1 + backups), i_block=bytes(i_block))


def write_metadata(fd: int, p: FsParams, records: Sequence[InodeRecord], *,
                   dirs_by_ino: Sequence[int]) -> Totals:
    geo, csums = p.geo, p.csums
    ipg = geo.inodes_per_group
    records = list(records)
    if p.resize_dind:
        records.append(_resize_inode(p))
        for where, data in resize_blocks(geo, p.resize_dind):
            write_at(fd, data, where * BLOCK_SIZE)
    by_group: dict[int, list[InodeRecord]] = {}
    for rec in records:
        if not 0 < rec.number <= geo.inodes:
            raise AssertionError(f"internal error: inode {rec.number} is outside the table")
        by_group.setdefault((rec.number - 1) // ipg, []).append(rec)
    in_use = [set() for _ in range(geo.groups)]  # type: list[set[int]]
    in_use[0].update(range(FIRST_INO - 1))      # inodes 1-10, as indexes 0-9
    for group, members in by_group.items():
        last = max((r.number - 1) % ipg for r in members)
        table = bytearray((last + 1) * geo.inode_size)
        for rec in members:
            index = (rec.number - 1) % ipg
            encode_inode(table, index * geo.inode_size, rec, inode_size=geo.inode_size,
                         csums=csums)
            in_use[group].add(index)
        write_at(fd, bytes(table), p.placement.inode_table[group] * BLOCK_SIZE)
    dirs = Counter((n - 1) // ipg for n in dirs_by_ino)
    counts: list[GroupCounts] = []
    free_blocks = free_inodes = 0
    for g in range(geo.groups):
        bitmap = bytearray(BLOCK_SIZE)
        for index in in_use[g]:
            bitmap[index >> 3] |= 1 << (index & 7)
        bitmap[ipg // 8:] = b"\xff" * (BLOCK_SIZE - ipg // 8)     # padding past the group
        write_at(fd, bytes(bitmap), p.placement.inode_bitmap[g] * BLOCK_SIZE)
        blocks = p.used.group_bitmap(g)
        write_at(fd, blocks, p.placement.block_bitmap[g] * BLOCK_SIZE)
        free_b = p.used.free_in_group(g)
        free_i = ipg - len(in_use[g])
        free_blocks += free_b
        free_inodes += free_i
        bb_csum = ib_csum = 0
        if csums.fs_seed is not None:
            bb_csum = ext4_crc(csums.fs_seed, blocks[:BLOCKS_PER_GROUP // 8])
            ib_csum = ext4_crc(csums.fs_seed, bitmap[:ipg // 8])
        unused = ipg - (max(in_use[g]) + 1 if in_use[g] else 0) if csums.enabled else 0
        counts.append(GroupCounts(
            block_bitmap=p.placement.block_bitmap[g], inode_bitmap=p.placement.inode_bitmap[g],
            inode_table=p.placement.inode_table[g], free_blocks=free_b, free_inodes=free_i,
            used_dirs=dirs.get(g, 0), itable_unused=unused, block_bitmap_csum=bb_csum,
            inode_bitmap_csum=ib_csum))
    descriptors = encode_descriptors(geo, counts, csums)
    journal = b"\0" * 68
    if p.journal is not None:
        journal = p.journal.i_block + struct.pack("<II", p.journal.size >> 32,
                                                  p.journal.size & 0xFFFFFFFF)
    large = geo.inode_size > GOOD_OLD_INODE_SIZE
    sb = Superblock(geo=geo, features=p.features, free_blocks=free_blocks,
                    free_inodes=free_inodes, reserved_blocks=p.reserved_blocks, uuid=p.uuid,
                    hash_seed=p.hash_seed, label=p.label, epoch=p.epoch,
                    journal_blocks=journal, min_extra_isize=EXTRA_ISIZE if large else 0)
    for g in geo.backup_groups():
        start = geo.group_start(g) * BLOCK_SIZE
        write_at(fd, encode_superblock(sb, g, csums),
                 start + (SUPERBLOCK_OFFSET if g == 0 else 0))
        write_at(fd, descriptors, start + BLOCK_SIZE)
    return Totals(free_blocks=free_blocks, free_inodes=free_inodes)
