"""Write a whole ext4 image from flat entries and their content files: the driver.

``write_ext4`` runs, in order: number the tree (tree), lay out xattrs and
build every directory's blocks (their bytes depend only on inode numbers),
probe each regular file's data segments (data), plan the size with the same
rules as the mkfs builder (auto with headroom, or fixed), place the metadata
(geometry), then allocate blocks strictly in order (alloc): the resize
inode's block, the journal, directories, slow symlinks and xattr blocks in
inode order, then file data in inode order, each file's extent tree blocks
right after its data. Data is copied as it is allocated; then the inode
tables, bitmaps, descriptors and superblocks are written (layout_writer).

Deterministic: the bytes depend on the entries (their order numbers the
inodes), the content bytes and holes, the options and the seed; times not
taken from entries are FS_EPOCH. The image is built in a temporary file
beside ``output`` and renamed into place only when complete.
"""

from __future__ import annotations

import os
import time
import uuid as uuidlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.ext4.native.alloc import Allocator, UsedBlocks
from pipeline.ext4.native.checksum import Checksums
from pipeline.ext4.native.data import Content, CopyJob, copy_all, probe, write_at
from pipeline.ext4.native.directory import HtreeParams, directory_blocks
from pipeline.ext4.native.dirhash import seed_words
from pipeline.ext4.native.extents import EMPTY_ROOT, build_tree, extents_for
from pipeline.ext4.native.geometry import BLOCK_SIZE, make_geometry, place_metadata
from pipeline.ext4.native.inode import (
    EXTENTS_FL,
    EXTRA_ISIZE,
    GOOD_OLD_INODE_SIZE,
    INDEX_FL,
    InodeRecord,
    device_block,
)
from pipeline.ext4.native.inputs import (
    FS_EPOCH,
    ContentSource,
    Ext4Options,
    FileType,
    FlatEntry,
    ImageOutput,
    TreeUsage,
    derive_uuids,
    plan_for,
)
from pipeline.ext4.native.journal import JOURNAL_INO, journal_superblock
from pipeline.ext4.native.metadata import FsParams, write_metadata
from pipeline.ext4.native.tree import LOST_FOUND_INO, number_tree
from pipeline.ext4.native.xattrs import XattrLayout, encode_block, lay_out_xattrs

__all__ = ["write_ext4", "write_image", "NativeResult", "WRITER_FORMAT_VERSION"]

WRITER_FORMAT_VERSION = 1
"""Bump whenever the same input could give different bytes: it keys the build."""
FAST_SYMLINK_MAX = 59                       # a target shorter than i_block lives in it
LOST_FOUND_BLOCKS = 4                       # mke2fs grows lost+found to 16 KiB
_EXTENTS_PER_BLOCK = 340
# Splits around metadata runs a file may take beyond its own extents: the
# planner's SLACK_BLOCKS covers the rare file pushed past four extents by them.
_SLACK_EXTENTS = 2


@dataclass(frozen=True, slots=True)
class NativeResult:
    """What a native build produced."""

    path: Path
    size: int
    """Filesystem size in bytes (the file is sparse)."""
    uuid: str
    inodes: int
    free_bytes: int
    """Blocks free for non-root users, in bytes."""
    free_inodes: int
    clamped_times: tuple[str, ...]
    """Paths whose time lay outside ext4's range and was clamped to it."""
    timings: Mapping[str, float] = field(default_factory=dict)


def write_ext4(entries: Sequence[FlatEntry], content: ContentSource, output: Path,
               options: Ext4Options, *, seed: str, min_inodes: int = 0) -> NativeResult:
    """Build ``output`` from ``entries`` (root first, parents before children) whose
    regular files' bytes ``content`` locates; nothing is left at ``output`` on failure."""
    with ImageOutput(output) as out:
        result = write_image(entries, content, out.fd, options, seed=seed,
                             min_inodes=min_inodes)
        out.publish()
    return replace(result, path=Path(output))


def write_image(entries: Sequence[FlatEntry], content: ContentSource, fd: int,
                options: Ext4Options, *, seed: str, min_inodes: int = 0) -> NativeResult:
    """Write the image into the empty file ``fd`` (see ``write_ext4``)."""
    clock = [time.monotonic()]
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        now = time.monotonic()
        timings[step] = round(now - clock[0], 3)
        clock[0] = now

    features = options.feature_set()
    inode_size = options.inode_size
    large = inode_size > GOOD_OLD_INODE_SIZE
    fs_uuid, hash_seed = derive_uuids(seed)
    uuid_bytes, seed_bytes = uuidlib.UUID(fs_uuid).bytes, uuidlib.UUID(hash_seed).bytes
    csums = Checksums(uuid_bytes, enabled="metadata_csum" in features)
    htree = HtreeParams(seed_words(seed_bytes), signed=True,
                        max_levels=3 if "large_dir" in features else 2) \
        if "dir_index" in features else None
    tree = number_tree(entries, epoch_ns=FS_EPOCH * 10**9, large_inode=large,
                       dir_nlink="dir_nlink" in features)
    inode_room = inode_size - GOOD_OLD_INODE_SIZE - EXTRA_ISIZE if large else 0
    xattrs: dict[int, XattrLayout] = {}
    dirs: dict[int, list[bytes]] = {}
    contents: dict[int, Content] = {}
    blocks_needed = 0
    for node in tree.nodes:
        rec = node.rec
        seed_of = csums.inode_seed(rec.number) if csums.enabled else None
        if node.entry is not None and node.entry.xattrs:
            lay = lay_out_xattrs(node.path, node.entry.xattrs, inode_room=inode_room)
            xattrs[rec.number] = lay
            blocks_needed += 1 if lay.block else 0
        if node.type is FileType.DIRECTORY:
            blocks, indexed = directory_blocks(
                node.path, rec.number, node.parent, node.children, seed=seed_of, htree=htree,
                min_blocks=LOST_FOUND_BLOCKS if rec.number == LOST_FOUND_INO else 1)
            dirs[rec.number] = blocks
            rec.flags = EXTENTS_FL | (INDEX_FL if indexed else 0)
            blocks_needed += len(blocks) + _tree_blocks(1 + _SLACK_EXTENTS)
        elif node.type is FileType.REGULAR and node.entry is not None and node.entry.size:
            source = content(node.entry)
            if source is None:
                raise AssertionError(f"internal error: no content for {node.path!r}")
            found = probe(node.path, os.fspath(source), node.entry.size)
            contents[rec.number] = found
            pieces = sum(-(-n // 32768) for _, n in found.segments)
            blocks_needed += found.blocks + _tree_blocks(pieces + _SLACK_EXTENTS)
        elif node.type is FileType.SYMLINK and node.entry is not None:
            blocks_needed += 1 if len(_target(node.entry)) > FAST_SYMLINK_MAX else 0
    lap("tree")

    tree_inodes = len(tree.nodes) - (1 if tree.nodes[1].entry is None else 0)
    usage = TreeUsage(blocks=blocks_needed, inodes=max(10 + tree_inodes, min_inodes),
                      tree_inodes=tree_inodes)
    plan = plan_for(usage, options)
    shape = plan.layout
    geo = make_geometry(shape.blocks, shape.inodes // shape.groups, inode_size=inode_size,
                        desc_size=options.desc_size, resize_inode="resize_inode" in features,
                        flex_bg="flex_bg" in features, sparse_super="sparse_super" in features)
    if geo.groups != shape.groups or geo.inodes != shape.inodes:
        raise AssertionError("internal error: the geometry disagrees with the size plan")
    placement = place_metadata(geo)
    used = UsedBlocks(geo.blocks, geo.groups)
    for start, length in placement.used:
        used.mark(start, length)
    alloc = Allocator(used, placement.used, 0)
    os.ftruncate(fd, geo.blocks * BLOCK_SIZE)

    def put(block: int, data: bytes) -> None:
        write_at(fd, data, block * BLOCK_SIZE)

    def place_tree(rec: InodeRecord, extents: list[tuple[int, int, int]]) -> None:
        seed_of = csums.inode_seed(rec.number) if csums.enabled else None
        i_block, tree_blocks = build_tree(extents, alloc.take_one, seed_of)
        for where, data in tree_blocks:
            put(where, data)
        rec.i_block = i_block
        rec.blocks += len(tree_blocks)

    special: list[InodeRecord] = []
    resize_dind = alloc.take_one() if geo.reserved_gdt else 0
    journal_blocks = shape.journal_blocks if "has_journal" in features else 0
    journal = None
    if journal_blocks:
        journal = InodeRecord(number=JOURNAL_INO, mode=0o100600, uid=0, gid=0,
                              time_ns=FS_EPOCH * 10**9, size=journal_blocks * BLOCK_SIZE,
                              blocks=journal_blocks, flags=EXTENTS_FL)
        runs = alloc.take(journal_blocks)
        put(runs[0][0], journal_superblock(journal_blocks, uuid_bytes))
        place_tree(journal, extents_for(0, runs))
        special.append(journal)
    lap("plan")

    for node in tree.nodes:                         # metadata-like blocks first, in order
        rec = node.rec
        lay_x = xattrs.get(rec.number)
        if lay_x is not None:
            rec.xattr_body = lay_x.body
            if lay_x.block:
                rec.xattr_block = alloc.take_one()
                rec.blocks += 1
                put(rec.xattr_block, encode_block(lay_x.block, rec.xattr_block, csums.fs_seed))
        if node.type is FileType.DIRECTORY:
            blocks = dirs.pop(rec.number)
            runs = alloc.take(len(blocks))
            k = 0
            for start, length in runs:
                put(start, b"".join(blocks[k:k + length]))
                k += length
            rec.size = len(blocks) * BLOCK_SIZE
            rec.blocks += len(blocks)
            place_tree(rec, extents_for(0, runs))
        elif node.type is FileType.SYMLINK and node.entry is not None:
            target = _target(node.entry)
            rec.size = len(target)
            if len(target) > FAST_SYMLINK_MAX:
                where = alloc.take_one()
                put(where, target.ljust(BLOCK_SIZE, b"\0"))
                rec.flags = EXTENTS_FL
                rec.blocks += 1
                place_tree(rec, [(0, where, 1)])
            else:
                rec.i_block = target.ljust(60, b"\0")
        elif node.type in (FileType.CHAR, FileType.BLOCK) and node.entry is not None:
            assert node.entry.rdev is not None
            rec.i_block = device_block(node.path, *node.entry.rdev)
    lap("directories")

    jobs: list[CopyJob] = []
    for node in tree.nodes:                         # then file data, in inode order
        rec = node.rec
        if node.type is not FileType.REGULAR or node.entry is None:
            continue
        rec.size = node.entry.size
        rec.flags = EXTENTS_FL
        data = contents.get(rec.number)
        if data is None:
            rec.i_block = EMPTY_ROOT
            continue
        mapped: list[tuple[int, int, int]] = []
        for first, count in data.segments:
            mapped += extents_for(first, alloc.take(count))
        jobs.append(CopyJob(node.path, data, rec.size, tuple(mapped)))
        rec.blocks += data.blocks
        place_tree(rec, mapped)
    copy_all(jobs, fd)
    lap("data")

    result = write_metadata(fd, FsParams(
        geo=geo, placement=placement, used=used, features=features, csums=csums,
        uuid=uuid_bytes, hash_seed=seed_bytes, label=options.label.encode(
            "utf-8", "surrogateescape"), reserved_blocks=plan.reserved_blocks,
        epoch=FS_EPOCH, resize_dind=resize_dind, journal=journal),
        [n.rec for n in tree.nodes] + special,
        dirs_by_ino=[n.rec.number for n in tree.nodes if n.type is FileType.DIRECTORY])
    lap("metadata")
    free_bytes = (result.free_blocks - plan.reserved_blocks) * BLOCK_SIZE
    if options.size is None and (free_bytes < plan.promised_free_bytes
                                 or result.free_inodes < plan.promised_free_inodes):
        raise AssertionError(f"internal error: auto size left {free_bytes} bytes and "
                             f"{result.free_inodes} inodes free, promised "
                             f"{plan.promised_free_bytes} and {plan.promised_free_inodes}")
    return NativeResult(path=Path(), size=geo.blocks * BLOCK_SIZE, uuid=fs_uuid,
                        inodes=geo.inodes, free_bytes=free_bytes,
                        free_inodes=result.free_inodes, clamped_times=tree.clamped,
                        timings=timings)


def _target(entry: FlatEntry) -> bytes:
    return os.fsencode(entry.target or "")


def _tree_blocks(extents: int) -> int:
    if extents <= 4:
        return 0
    total, n = 0, extents
    while n > 4:
        n = -(-n // _EXTENTS_PER_BLOCK)
        total += n
    return total
