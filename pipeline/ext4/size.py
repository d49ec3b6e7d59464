"""How big an ext4 filesystem a flat image needs, computed before mkfs runs.

Two halves, both pure arithmetic on the entries and the options:

- ``measure_tree``: the 4 KiB blocks the tree itself occupies (file data
  rounded up to blocks, extent index blocks, directory blocks packed the way
  libext2fs's ``ext2fs_link`` packs them, slow symlinks, external xattr
  blocks) and the inodes it needs.
- ``layout``: what mke2fs adds for a given block and inode count (block
  groups, bitmaps, inode tables, superblock and descriptor backups, reserved
  descriptor blocks for online resize, the journal), mirroring
  ``ext2fs_initialize`` and ``calc_reserved_gdt_blocks`` in lib/ext2fs and
  mke2fs (e2fsprogs 1.47), including its habit of dropping a last block group
  too small for its own metadata.

``plan_size`` combines them: auto sizes add the promised headroom and avoid
a trimmed last group; fixed sizes are checked, and a size that cannot hold
the tree fails here, before any tool runs. The estimate errs on the large
side (it counts every directory block as its own extent, for one); the
builder checks the promise against the finished filesystem's superblock.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

from pipeline.base.units import Headroom, format_size
from pipeline.errors import Ext4Error
from pipeline.ext4.disk import FIRST_INO, xattr_disk_name
from pipeline.flat.image import FileType, FlatEntry

__all__ = ["BLOCK_SIZE", "TreeUsage", "Layout", "SizePlan", "measure_tree", "layout",
           "plan_size", "has_super"]

BLOCK_SIZE = 4096
BLOCKS_PER_GROUP = 8 * BLOCK_SIZE          # one block bitmap block per group
MAX_INODES_PER_GROUP = 8 * BLOCK_SIZE      # one inode bitmap block per group
LOST_FOUND_BLOCKS = 4                      # mke2fs grows lost+found to 16 KiB
EXTENT_MAX_BLOCKS = 32768                  # initialized extent length limit
EXTENTS_IN_INODE = 4                       # i_block holds a header and four extents
EXTENTS_PER_BLOCK = (BLOCK_SIZE - 12) // 12
FAST_SYMLINK_MAX = 59                      # targets < sizeof(i_block) live in the inode
DIRENT_TAIL = 12                           # metadata_csum tail in every directory block
INODE_RATIO = 16384                        # mke2fs.conf default bytes per inode
# A safety margin for what the model does not follow block by block: files
# split at flex group boundaries, the journal's extent tree, the resize inode.
SLACK_BLOCKS = 64
# Rounds of the auto-size fixed point: each grows the size by at least 1 MiB
# and a handful usually suffice; the bound only turns a planner bug into an error.
MAX_PLAN_ROUNDS = 1000


def _round4(n: int) -> int:
    return (n + 3) & ~3


def _xattr_bytes(xattrs: Iterable[tuple[str, bytes]]) -> int:
    total = 0
    for name, value in xattrs:
        disk = xattr_disk_name(name)
        suffix = disk[1] if disk else os.fsencode(name)
        total += 16 + _round4(len(suffix)) + _round4(len(value))
    return total


def _extent_index_blocks(extents: int) -> int:
    return 0 if extents <= EXTENTS_IN_INODE else math.ceil(extents / EXTENTS_PER_BLOCK)


def _dir_blocks(names: list[bytes], *, csum: bool) -> int:
    """Blocks of a linear directory filled first-fit in insertion order."""
    room = BLOCK_SIZE - (DIRENT_TAIL if csum else 0)
    blocks, used = 1, 24                   # "." and ".." take 12 bytes each
    for name in names:
        rec = _round4(8 + len(name))
        if used + rec > room:
            blocks += 1
            used = 0
        used += rec
    return blocks


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """What the tree occupies, independent of filesystem size."""

    blocks: int
    """4 KiB blocks for data, directories, symlinks, xattrs and extent indexes."""
    inodes: int
    """Inode numbers the filesystem must hold: reserved ones, lost+found, the tree."""
    tree_inodes: int
    """Distinct inodes of the tree alone (root included)."""


def measure_tree(entries: list[FlatEntry], *, inode_size: int, csum: bool) -> TreeUsage:
    """Blocks and inodes the tree needs; raises Ext4Error for xattrs ext4 cannot hold."""
    in_inode = max(0, inode_size - 128 - 32 - 4 - 4)   # i_extra_isize 32, magic, terminator
    in_block = BLOCK_SIZE - 32 - 4                     # block header, terminator
    children: dict[str, list[bytes]] = {}
    seen_groups: set[int] = set()
    blocks = 0
    inodes = 0
    has_lost_found = False
    for entry in entries:
        if entry.path:
            parent, _, name = entry.path.rpartition("/")
            children.setdefault(parent, []).append(os.fsencode(name))
            if entry.path == "lost+found":
                has_lost_found = True
        if entry.link_group is not None:
            if entry.link_group in seen_groups:
                continue
            seen_groups.add(entry.link_group)
        inodes += 1
        if entry.type is FileType.REGULAR:
            data = math.ceil(entry.size / BLOCK_SIZE)
            extents = math.ceil(data / EXTENT_MAX_BLOCKS) + (1 if data > 1 else 0)
            blocks += data + _extent_index_blocks(extents)
        elif entry.type is FileType.SYMLINK:
            if len(os.fsencode(entry.target or "")) > FAST_SYMLINK_MAX:
                blocks += 1
        xattr_size = _xattr_bytes(entry.xattrs)
        if xattr_size:
            if xattr_size > in_inode + in_block:
                raise Ext4Error(f"{entry.path or '/'!r}: its extended attributes need "
                                f"{xattr_size} bytes, more than the {in_inode + in_block} an "
                                f"ext4 inode and one 4 KiB block hold; drop some in the image")
            if xattr_size + 4 > in_inode:
                blocks += 1
    for entry in entries:
        if entry.type is FileType.DIRECTORY:
            names = children.get(entry.path, [])
            if entry.path == "" and not has_lost_found:
                names = [b"lost+found", *names]
            nblocks = _dir_blocks(names, csum=csum)
            # Directory blocks are allocated one at a time between file data:
            # count each as its own extent.
            blocks += nblocks + _extent_index_blocks(nblocks)
    if not has_lost_found:
        blocks += LOST_FOUND_BLOCKS
    # The root is inode 2 and a declared lost+found reuses inode 11.
    total = FIRST_INO + inodes - 1 - (1 if has_lost_found else 0)
    return TreeUsage(blocks=blocks, inodes=total, tree_inodes=inodes)


@dataclass(frozen=True, slots=True)
class Layout:
    """mke2fs's metadata for a block and inode count (4 KiB blocks)."""

    blocks: int
    """Blocks mke2fs really uses (it may drop a too-small last group)."""
    groups: int
    inodes: int
    """Inode count after rounding to whole inode-table blocks per group."""
    journal_blocks: int
    overhead: int
    """Every block that is not free for files after mkfs of an empty tree."""


def has_super(group: int, sparse: bool) -> bool:
    """Whether ``group`` holds a superblock copy (sparse_super: 0, 1 and powers of 3, 5, 7)."""
    if not sparse or group <= 1:
        return True
    for base in (3, 5, 7):
        n = base
        while n < group:
            n *= base
        if n == group:
            return True
    return False


def default_journal_blocks(blocks: int) -> int:
    """ext2fs_default_journal_size (lib/ext2fs/mkjournal.c), never below 4 MiB."""
    for limit, size in ((32768, 1024), (256 * 1024, 4096), (512 * 1024, 8192),
                        (4096 * 1024, 16384), (8192 * 1024, 32768),
                        (16384 * 1024, 65536), (32768 * 1024, 131072)):
        if blocks < limit:
            return size
    return 262144


def layout(blocks: int, inodes: int, *, inode_size: int, journal: bool, desc_size: int,
           resize_inode: bool, sparse_super: bool) -> Layout:
    """The metadata mke2fs lays down for ``blocks`` and ``-N inodes``.

    Raises Ext4Error when mke2fs could not fit the inodes into the groups.
    """
    while True:
        groups = math.ceil(blocks / BLOCKS_PER_GROUP)
        desc_per_block = BLOCK_SIZE // desc_size
        desc_blocks = math.ceil(groups / desc_per_block)
        rsv_gdt = 0
        if resize_inode:
            # calc_reserved_gdt_blocks: room to grow 1024-fold, at most one block of pointers.
            max_blocks = blocks * 1024 if blocks < 0xFFFFFFFF // 1024 else 0xFFFFFFFF
            rsv_groups = math.ceil(max_blocks / BLOCKS_PER_GROUP)
            rsv_gdt = max(0, min(math.ceil(rsv_groups / desc_per_block) - desc_blocks,
                                 BLOCK_SIZE // 4))
        ipg = math.ceil(inodes / groups)
        if ipg > MAX_INODES_PER_GROUP:
            raise Ext4Error(f"{inodes} inodes do not fit in {format_size(blocks * BLOCK_SIZE)}: "
                            f"ext4 holds at most {MAX_INODES_PER_GROUP} per "
                            f"{format_size(BLOCKS_PER_GROUP * BLOCK_SIZE)} block group")
        per_block = BLOCK_SIZE // inode_size
        itable = math.ceil(ipg / per_block)
        ipg = max(8, (itable * per_block) & ~7)
        itable = math.ceil(ipg * inode_size / BLOCK_SIZE)
        backup = 1 + desc_blocks + rsv_gdt
        rem = blocks % BLOCKS_PER_GROUP
        last_overhead = 2 + itable + (backup if has_super(groups - 1, sparse_super) else 0)
        if rem and rem < last_overhead + 50:
            if groups == 1:
                raise Ext4Error(f"{format_size(blocks * BLOCK_SIZE)} is too small for an "
                                f"ext4 filesystem with {inodes} inodes")
            blocks -= rem                   # ext2fs_initialize drops the last group
            continue
        break
    overhead = groups * (2 + itable)
    overhead += sum(backup for g in range(groups) if has_super(g, sparse_super))
    if resize_inode:
        overhead += 1                       # the resize inode's double-indirect block
    journal_blocks = 0
    if journal:
        journal_blocks = default_journal_blocks(blocks)
        overhead += journal_blocks + 1      # one extent index block
    return Layout(blocks=blocks, groups=groups, inodes=ipg * groups,
                  journal_blocks=journal_blocks, overhead=overhead)


@dataclass(frozen=True, slots=True)
class SizePlan:
    """The numbers handed to mke2fs, and the promise they keep."""

    layout: Layout
    usage: TreeUsage
    reserved_blocks: int
    free_blocks: int
    """Free blocks left for non-root users, as planned (before slack is used)."""
    promised_free_bytes: int
    promised_free_inodes: int

    @property
    def size(self) -> int:
        return self.layout.blocks * BLOCK_SIZE


def _round_mib(blocks: int) -> int:
    return -(-blocks // 256) * 256


def plan_size(usage: TreeUsage, *, size: int | None, headroom: Headroom, inode_size: int,
              journal: bool, reserved_percent: float, desc_size: int, resize_inode: bool,
              sparse_super: bool) -> SizePlan:
    """Choose (auto, ``size=None``) or check (fixed) the filesystem size for ``usage``.

    Raises Ext4Error, naming the size needed, when a fixed size cannot hold the tree.
    """
    def lay_out(blocks: int, inodes: int) -> Layout:
        lay = layout(blocks, inodes, inode_size=inode_size, journal=journal,
                     desc_size=desc_size, resize_inode=resize_inode, sparse_super=sparse_super)
        if lay.inodes < inodes:
            # mke2fs fills whole inode-table blocks, then rounds the inodes per
            # group down to a multiple of 8 (ext2fs_initialize): with 1024-byte
            # inodes that loses up to 4 per group. Ask for a count both
            # roundings keep.
            align = max(8, BLOCK_SIZE // inode_size)
            per_group = -(-inodes // lay.groups)
            lay = layout(blocks, lay.groups * -(-per_group // align) * align,
                         inode_size=inode_size, journal=journal, desc_size=desc_size,
                         resize_inode=resize_inode, sparse_super=sparse_super)
        return lay

    used = usage.blocks + SLACK_BLOCKS

    def reserved(blocks: int) -> int:
        return math.floor(blocks * reserved_percent / 100)

    def needed(lay: Layout, want_free: int) -> int:
        # mke2fs makes the journal before copying files and refuses one
        # bigger than half of the free blocks at that point.
        return max(used + want_free + lay.overhead + reserved(lay.blocks),
                   lay.overhead + lay.journal_blocks)

    if size is not None:
        if size % BLOCK_SIZE:
            raise Ext4Error(f"size {size} is not a multiple of the {BLOCK_SIZE}-byte block "
                            f"size; round it to whole MiB")
        lay = None
        # mke2fs's usual bytes-per-inode ratio if that fits, else just what the tree needs.
        for inodes in (max(usage.inodes, size // INODE_RATIO), usage.inodes):
            try:
                candidate = lay_out(size // BLOCK_SIZE, inodes)
            except Ext4Error:
                continue
            if needed(candidate, 0) <= candidate.blocks:
                lay = candidate
                break
        if lay is None:
            least = plan_size(usage, size=None, headroom=Headroom(), inode_size=inode_size,
                              journal=journal, reserved_percent=reserved_percent,
                              desc_size=desc_size, resize_inode=resize_inode,
                              sparse_super=sparse_super).size
            raise Ext4Error(f"size {format_size(size)} is too small for this image: it needs "
                            f"at least {format_size(least)}; raise `size` or use \"auto\"")
        promised_bytes, promised_inodes = 0, 0
    else:
        promised_bytes = headroom.for_used(usage.blocks * BLOCK_SIZE)
        want_free = math.ceil(promised_bytes / BLOCK_SIZE)
        promised_inodes = max(math.ceil(usage.tree_inodes * headroom.percent / 100),
                              promised_bytes // INODE_RATIO)
        inodes = usage.inodes + promised_inodes
        min_groups = math.ceil(inodes / MAX_INODES_PER_GROUP)
        blocks = _round_mib(used + want_free)
        if min_groups > 1:
            blocks = max(blocks, min_groups * BLOCKS_PER_GROUP)
        # Converges in a few rounds: metadata grows far slower than the size.
        for _ in range(MAX_PLAN_ROUNDS):
            lay = lay_out(blocks, inodes)
            if lay.blocks < blocks:         # a last group mke2fs would drop: grow it
                blocks += 256
                continue
            need = needed(lay, want_free)
            if need <= blocks:
                break
            blocks = _round_mib(need)
        else:
            raise AssertionError("internal error: ext4 size planning did not converge")
    free = lay.blocks - lay.overhead - usage.blocks - reserved(lay.blocks)
    return SizePlan(layout=lay, usage=usage, reserved_blocks=reserved(lay.blocks),
                    free_blocks=free, promised_free_bytes=promised_bytes,
                    promised_free_inodes=promised_inodes)
