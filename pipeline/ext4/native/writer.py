"""Write a whole ext4 image from flat entries and their bytes: the driver.

``write_ext4`` runs, in order: number the tree (tree), lay out each inode's
xattrs, find each regular file's data segments (data: dense unless probed,
see ``write_image``) and bound each directory's blocks (sizing); plan the
size with the same rules as the mkfs builder (auto with headroom, or fixed)
and place the metadata (geometry). Then blocks are allocated strictly in
order (placer): the resize inode's block, the journal, every file's data in
inode order (each file's extent tree blocks right after it), whose copy jobs
go to the helper process at once (copyproc); then, while it copies, each
directory is built and placed, then slow symlinks and xattr blocks, in inode
order; last the inode tables, bitmaps, descriptors and superblocks
(metadata). The copies are awaited before the image is published.

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

from pipeline.ext4.native.checksum import Checksums
from pipeline.ext4.native.copyjobs import (
    OUTPUT_FAILED,
    CopyFailed,
    SparseContent,
    encode_job,
)
from pipeline.ext4.native.copyproc import CopyProcess
from pipeline.ext4.native.data import Content, probe
from pipeline.ext4.native.directory import HtreeParams, directory_blocks
from pipeline.ext4.native.dirhash import seed_words
from pipeline.ext4.native.errors import BadTree
from pipeline.ext4.native.extents import (
    EMPTY_ROOT,
    MAX_EXTENT_BLOCKS,
    extents_for,
    one_extent_root,
)
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
    NATIVE_WRITER_FORMAT,
    ContentSource,
    CopiedRun,
    Ext4Error,
    Ext4Options,
    FileType,
    FlatEntry,
    ImageOutput,
    Sha256Thread,
    TreeUsage,
    derive_uuids,
    plan_for,
)
from pipeline.ext4.native.journal import JOURNAL_INO, journal_superblock
from pipeline.ext4.native.metadata import FsParams, write_metadata
from pipeline.ext4.native.placer import Placer
from pipeline.ext4.native.sizing import LOST_FOUND_BLOCKS, dir_blocks_bound, tree_blocks
from pipeline.ext4.native.tree import LOST_FOUND_INO, Node, Tree, number_tree
from pipeline.ext4.native.xattrs import XattrLayout, encode_block, lay_out_xattrs

__all__ = ["write_ext4", "write_image", "NativeResult", "WRITER_FORMAT_VERSION"]

WRITER_FORMAT_VERSION = NATIVE_WRITER_FORMAT
"""Bump (in ext4.builder, which the task keys read without loading the writer) whenever
the same input could give different bytes: it keys the build."""
FAST_SYMLINK_MAX = 59                       # a target shorter than i_block lives in it
_JOURNAL_MODE = 0o100600


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
    """Seconds per step: survey (tree, xattrs, probes), plan, data (allocation; the copies
    start), directories, metadata, copy (waiting for what remained of the copies), hash
    (what remained of the hash, when asked for)."""
    sha256: str = ""
    """The image's sha256 when ``write_image`` was given ``hash_path``, else empty."""


@dataclass(frozen=True, slots=True)
class _Survey:
    tree: Tree
    xattrs: dict[int, XattrLayout]
    files: list[tuple[Node, Content]]
    """Regular files with data, in inode order."""
    blocks: int
    """Blocks the tree needs at most."""


def write_ext4(entries: Sequence[FlatEntry], content: ContentSource, output: Path,
               options: Ext4Options, *, seed: str) -> NativeResult:
    """Build ``output`` from ``entries`` (root first, parents before children) whose
    regular files' bytes ``content`` locates; nothing is left at ``output`` on failure."""
    with ImageOutput(output) as out:
        result = write_image(entries, content, out.fd, options, seed=seed)
        out.publish()
    return replace(result, path=Path(output))


def _survey(entries: Sequence[FlatEntry], content: ContentSource, options: Ext4Options,
            features: frozenset[str], *, assume_dense: bool) -> _Survey:
    large = options.inode_size > GOOD_OLD_INODE_SIZE
    tree = number_tree(entries, epoch_ns=FS_EPOCH * 10**9, large_inode=large,
                       dir_nlink="dir_nlink" in features)
    inode_room = options.inode_size - GOOD_OLD_INODE_SIZE - EXTRA_ISIZE if large else 0
    csum, htree = "metadata_csum" in features, "dir_index" in features
    xattrs: dict[int, XattrLayout] = {}
    files: list[tuple[Node, Content]] = []
    blocks = 0
    regular = FileType.REGULAR
    one_extent = tree_blocks(1)
    for node in tree.nodes:
        entry = node.entry
        if node.type is regular:
            assert entry is not None
            if entry.xattrs:
                xattrs[node.rec.number] = lay = lay_out_xattrs(node.path, entry.xattrs,
                                                               inode_room=inode_room)
                blocks += 1 if lay.block else 0
            if entry.size:
                source = content(entry)
                if source is None:
                    raise AssertionError(f"internal error: no content for {node.path!r}")
                path, offset = source
                if assume_dense:            # checked by the copy, which opens it anyway
                    count = -(-entry.size // BLOCK_SIZE)
                    found = Content(path, offset, ((0, count),))
                else:
                    found = probe(node.path, path, offset, entry.size)
                files.append((node, found))
                segments = found.segments
                if len(segments) == 1:           # dense: one segment from block 0
                    count = segments[0][1]
                    blocks += count + (one_extent if count <= MAX_EXTENT_BLOCKS else
                                       tree_blocks(-(-count // MAX_EXTENT_BLOCKS)))
                else:
                    blocks += found.blocks + tree_blocks(
                        sum(-(-n // MAX_EXTENT_BLOCKS) for _, n in segments))
            continue
        number = node.rec.number
        if entry is not None and entry.xattrs:
            xattrs[number] = lay = lay_out_xattrs(node.path, entry.xattrs,
                                                  inode_room=inode_room)
            blocks += 1 if lay.block else 0
        if node.type is FileType.DIRECTORY:
            blocks += dir_blocks_bound(
                (name for name, _, _ in node.children), csum=csum, htree=htree,
                min_blocks=LOST_FOUND_BLOCKS if number == LOST_FOUND_INO else 1)
            blocks += tree_blocks(1)
        elif entry is not None and node.type is FileType.SYMLINK:
            blocks += 1 if len(_target(entry)) > FAST_SYMLINK_MAX else 0
    return _Survey(tree, xattrs, files, blocks)


def write_image(entries: Sequence[FlatEntry], content: ContentSource, fd: int,
                options: Ext4Options, *, seed: str,
                hash_path: Path | None = None) -> NativeResult:
    """Write the image into the empty file ``fd`` (see ``write_ext4``); with ``hash_path``
    (``fd``'s file), also its sha256, hashed on a thread while file data is copied.

    With an auto size, contents are first taken to be dense, as layer packs are,
    saving a stat per file; should the copy find a source with holes, the image is
    written again with every file probed, so the bytes are the same either way. A
    fixed size is planned from probed files, so that holes count before a refusal.
    """
    if options.size is None:
        try:
            return _write(entries, content, fd, options, seed=seed, assume_dense=True,
                          hash_path=hash_path)
        except SparseContent:
            os.ftruncate(fd, 0)
    return _write(entries, content, fd, options, seed=seed, assume_dense=False,
                  hash_path=hash_path)


def _write(entries: Sequence[FlatEntry], content: ContentSource, fd: int,
           options: Ext4Options, *, seed: str, assume_dense: bool,
           hash_path: Path | None = None) -> NativeResult:
    clock = [time.monotonic()]
    timings: dict[str, float] = {}

    def lap(step: str) -> None:
        now = time.monotonic()
        timings[step] = round(now - clock[0], 3)
        clock[0] = now

    features = options.feature_set()
    fs_uuid, hash_seed = derive_uuids(seed)
    uuid_bytes, seed_bytes = uuidlib.UUID(fs_uuid).bytes, uuidlib.UUID(hash_seed).bytes
    csums = Checksums(uuid_bytes, enabled="metadata_csum" in features)
    survey = _survey(entries, content, options, features, assume_dense=assume_dense)
    nodes = survey.tree.nodes
    lap("survey")

    tree_inodes = len(nodes) - (1 if nodes[1].entry is None else 0)
    plan = plan_for(TreeUsage(blocks=survey.blocks, inodes=10 + tree_inodes,
                              tree_inodes=tree_inodes), options)
    shape = plan.layout
    geo = make_geometry(shape.blocks, shape.inodes // shape.groups,
                        inode_size=options.inode_size, desc_size=options.desc_size,
                        resize_inode="resize_inode" in features,
                        flex_bg="flex_bg" in features, sparse_super="sparse_super" in features)
    if geo.groups != shape.groups or geo.inodes != shape.inodes:
        raise AssertionError("internal error: the geometry disagrees with the size plan")
    placement = place_metadata(geo)
    os.ftruncate(fd, geo.blocks * BLOCK_SIZE)
    placer = Placer(fd, geo, placement, csums)
    resize_dind = placer.take_one() if geo.reserved_gdt else 0
    journal = None
    if "has_journal" in features:
        journal = InodeRecord(number=JOURNAL_INO, mode=_JOURNAL_MODE, uid=0, gid=0,
                              time_ns=FS_EPOCH * 10**9, size=shape.journal_blocks * BLOCK_SIZE,
                              blocks=shape.journal_blocks, flags=EXTENTS_FL)
        runs = placer.take(shape.journal_blocks)
        placer.put(runs[0][0], journal_superblock(shape.journal_blocks, uuid_bytes))
        placer.map_extents(journal, extents_for(0, runs))
    lap("plan")

    for node in nodes:
        if node.type is FileType.REGULAR and node.entry is not None:
            rec = node.rec
            rec.size, rec.flags, rec.i_block = node.entry.size, EXTENTS_FL, EMPTY_ROOT
    with CopyProcess(fd, dense=assume_dense) as copier:
        take = placer.take
        jobs: list[bytes] = []
        copied: list[CopiedRun] = []                # what the hash reads from the sources
        data_start = placer.cursor
        for node, data in survey.files:             # file data first, copied meanwhile
            rec = node.rec
            segments = data.segments
            if len(segments) == 1:
                first, count = segments[0]
                runs = take(count)
                if len(runs) == 1 and first == 0 and count <= MAX_EXTENT_BLOCKS:
                    start = runs[0][0]              # one extent: most files
                    mapped = [(0, start, count)]
                    rec.i_block = one_extent_root(0, start, count)
                else:
                    mapped = extents_for(first, runs)
                    placer.map_extents(rec, mapped)
            else:
                mapped = []
                for first, count in segments:
                    mapped += extents_for(first, take(count))
                placer.map_extents(rec, mapped)
            rec.blocks += data.blocks
            jobs.append(encode_job(data.path, data.offset, rec.size, mapped))
            if hash_path is not None:
                _add_copied(copied, data.path, data.offset or 0, rec.size, mapped)
        copier.send(jobs, data_start * BLOCK_SIZE, placer.cursor * BLOCK_SIZE)
        lap("data")
        htree = HtreeParams(seed_words(seed_bytes), signed=True,
                            max_levels=3 if "large_dir" in features else 2) \
            if "dir_index" in features else None
        for node in nodes:                          # then the rest, in inode order
            rec = node.rec
            lay = survey.xattrs.get(rec.number)
            if lay is not None:
                rec.xattr_body = lay.body
                if lay.block:
                    rec.xattr_block = placer.take_one()
                    rec.blocks += 1
                    placer.put(rec.xattr_block, encode_block(lay.block, rec.xattr_block,
                                                             csums.fs_seed))
            if node.type is FileType.DIRECTORY:
                seed_of = csums.inode_seed(rec.number) if csums.enabled else None
                blocks, indexed = directory_blocks(
                    node.path, rec.number, node.parent, node.children, seed=seed_of,
                    htree=htree,
                    min_blocks=LOST_FOUND_BLOCKS if rec.number == LOST_FOUND_INO else 1)
                runs = placer.take(len(blocks))
                placer.put_runs(runs, blocks)
                rec.flags = EXTENTS_FL | (INDEX_FL if indexed else 0)
                rec.size = len(blocks) * BLOCK_SIZE
                rec.blocks += len(blocks)
                placer.map_extents(rec, extents_for(0, runs))
            elif node.entry is None:
                continue
            elif node.type is FileType.SYMLINK:
                target = _target(node.entry)
                rec.size = len(target)
                if len(target) > FAST_SYMLINK_MAX:
                    where = placer.take_one()
                    placer.put(where, target.ljust(BLOCK_SIZE, b"\0"))
                    rec.flags = EXTENTS_FL
                    rec.blocks += 1
                    placer.map_extents(rec, [(0, where, 1)])
                else:
                    rec.i_block = target.ljust(60, b"\0")
            elif node.type in (FileType.CHAR, FileType.BLOCK):
                assert node.entry.rdev is not None
                rec.i_block = device_block(node.path, *node.entry.rdev)
        used = placer.finish()
        lap("directories")
        totals = write_metadata(fd, FsParams(
            geo=geo, placement=placement, used=used, features=features, csums=csums,
            uuid=uuid_bytes, hash_seed=seed_bytes,
            label=options.label.encode("utf-8", "surrogateescape"),
            reserved_blocks=plan.reserved_blocks, epoch=FS_EPOCH, resize_dind=resize_dind,
            journal=journal), [n.rec for n in nodes] + ([journal] if journal else []),
            dirs_by_ino=[n.rec.number for n in nodes if n.type is FileType.DIRECTORY])
        lap("metadata")
        # Everything but the copied data is in place: the hash starts, reading that data
        # from where the copy takes it, not waiting for the copy.
        hashing = Sha256Thread(hash_path, copied) if hash_path is not None else None
        try:
            _await_copies(copier, survey.files)
        except BaseException:
            if hashing is not None:
                hashing.cancel()            # before the image is removed
            raise
        lap("copy")
        digest = hashing.result() if hashing is not None else ""
    if hashing is not None:
        lap("hash")
    free_bytes = (totals.free_blocks - plan.reserved_blocks) * BLOCK_SIZE
    if options.size is None and (free_bytes < plan.promised_free_bytes
                                 or totals.free_inodes < plan.promised_free_inodes):
        raise AssertionError(f"internal error: auto size left {free_bytes} bytes and "
                             f"{totals.free_inodes} inodes free, promised "
                             f"{plan.promised_free_bytes} and {plan.promised_free_inodes}")
    return NativeResult(path=Path(), size=geo.blocks * BLOCK_SIZE, uuid=fs_uuid,
                        inodes=geo.inodes, free_bytes=free_bytes,
                        free_inodes=totals.free_inodes, clamped_times=survey.tree.clamped,
                        timings=timings, sha256=digest)


def _add_copied(copied: list[CopiedRun], source: str, start: int, size: int,
                mapped: list[tuple[int, int, int]]) -> None:
    """The image ranges a file's copy job writes, as ``CopiedRun``s: each mapped run of
    blocks holds the file's bytes from its logical block on, then zeros to its end."""
    for logical, physical, count in mapped:
        offset = logical * BLOCK_SIZE
        length = min(count * BLOCK_SIZE, size - offset)
        copied.append((physical * BLOCK_SIZE, length, source, start + offset,
                       count * BLOCK_SIZE - length))


def _await_copies(copier: CopyProcess, files: list[tuple[Node, Content]]) -> None:
    """Wait for the copy helper; its failures as the errors the writer raises."""
    try:
        copier.wait()
    except CopyFailed as failed:
        if failed.index == OUTPUT_FAILED:
            code = int(failed.message)
            raise OSError(code, os.strerror(code)) from None
        if failed.index < 0:
            raise Ext4Error(failed.message) from None
        raise BadTree(files[failed.index][0].path, failed.message) from None


def _target(entry: FlatEntry) -> bytes:
    return os.fsencode(entry.target or "")
