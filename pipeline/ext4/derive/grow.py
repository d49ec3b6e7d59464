"""Turning a copy of a base image into the filesystem a derived image needs: copy, size,
resize, identity.

- ``copy_sparse``: a reflink when the filesystem offers one, else only the
  base's data extents (SEEK_DATA/SEEK_HOLE, ``copy_file_range``); holes stay
  holes, so the copy costs the base's data, not its size.
- ``plan_grown_size``: the size the full build would plan for C's tree with
  the image's options, checked against what growing the base really gives.
  ``resize2fs`` keeps the base's inodes per group, inode tables, reserved GDT
  blocks and journal, so the grown filesystem's metadata is modelled with
  ``ext4size.layout`` at the base's inode density; an auto size that would
  then break its free-space promise grows by the missing MiB (so a derived
  image may be a few MiB larger than a full build), and anything the grown
  base cannot do exactly (shrink, hold the inodes, a fixed size whose last
  group resize2fs would drop) is refused: the image is built in full.
- ``resize``: ``resize2fs`` with the new groups' inode tables written
  eagerly. Left to itself it goes lazy whenever the host kernel offers lazy
  init (``/sys/fs/ext4/features/lazy_itable_init``) and then leaves the
  groups' ITABLE_ZEROED flag clear: the bytes would depend on the host.
  ``RESIZE2FS_FORCE_ITABLE_INIT`` takes the host out (checked: the same
  bytes as on a host without that file).
- ``set_identity``: ``tune2fs -U`` (the image's own UUID; with metadata_csum
  it rewrites every checksum, which is why it costs what it does) and ``-r``
  (the reserved blocks mke2fs would have set for this size).

Every tool runs with the pinned clock and in the C locale; nothing they
print is trusted beyond their exit status and ``superblock_counts``.
"""

from __future__ import annotations

import errno
import fcntl
import math
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ToolError
from pipeline.ext4.debugfs import tool_env
from pipeline.ext4.derive.diff import DeriveRefused
from pipeline.ext4.disk import superblock_counts
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.size import (
    BLOCK_SIZE,
    BLOCKS_PER_GROUP,
    SLACK_BLOCKS,
    SizePlan,
    TreeUsage,
    layout,
)
from pipeline.ext4.tools import fake_time_env

__all__ = ["BaseGeometry", "FreeBlocks", "copy_sparse", "plan_grown_size", "resize",
           "set_identity"]

_FICLONE = 0x40049409                       # linux/fs.h _IOW(0x94, 9, int)
_COPY_CHUNK = 1 << 30                       # copy_file_range may stop short; loop per extent
MAX_GROW_ROUNDS = 64                        # each round adds >= 1 MiB; a bound against bugs
_MIB_BLOCKS = (1 << 20) // BLOCK_SIZE


@dataclass(frozen=True, slots=True)
class BaseGeometry:
    """What a grown filesystem keeps from its base (read from the base's superblock)."""

    blocks: int
    inodes_per_group: int

    @classmethod
    def read(cls, image: Path) -> BaseGeometry:
        counts = superblock_counts(image)
        return cls(blocks=counts["blocks"], inodes_per_group=counts["inodes_per_group"])

    def inodes(self, blocks: int) -> int:
        return math.ceil(blocks / BLOCKS_PER_GROUP) * self.inodes_per_group


@dataclass(frozen=True, slots=True)
class FreeBlocks:
    """Free block counts of a filesystem: the superblock's and each group descriptor's."""

    total: int
    groups: tuple[int, ...]

    @classmethod
    def read(cls, image: Path) -> FreeBlocks:
        # ext4 disk layout, "Block Group Descriptors": with 4 KiB blocks the table
        # starts at block 1; bg_free_blocks_count_lo at 0x0C, _hi at 0x2C (64-byte
        # descriptors only).
        counts = superblock_counts(image)
        desc_size = counts["desc_size"]
        count = -(-counts["blocks"] // BLOCKS_PER_GROUP)
        with open(image, "rb") as f:
            table = os.pread(f.fileno(), count * desc_size, BLOCK_SIZE)
        groups = []
        for group in range(count):
            at = group * desc_size
            free, = struct.unpack_from("<H", table, at + 0x0C)
            if desc_size >= 64:
                free |= struct.unpack_from("<H", table, at + 0x2C)[0] << 16
            groups.append(free)
        return cls(total=counts["free_blocks"], groups=tuple(groups))


def copy_sparse(source: Path, fd: int) -> None:
    """Copy ``source`` into the empty file ``fd``: a reflink if possible, else its data
    extents only, at the same offsets."""
    with open(source, "rb") as src:
        size = os.fstat(src.fileno()).st_size
        try:
            fcntl.ioctl(fd, _FICLONE, src.fileno())
            return
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY,
                                 errno.EBADF, errno.ENOSYS):
                raise
        os.ftruncate(fd, size)
        pos = 0
        while pos < size:
            try:
                pos = os.lseek(src.fileno(), pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:    # only a hole remains
                    return
                raise
            end = os.lseek(src.fileno(), pos, os.SEEK_HOLE)
            while pos < end:
                n = os.copy_file_range(src.fileno(), fd, min(end - pos, _COPY_CHUNK), pos, pos)
                if n <= 0:
                    raise AssertionError(f"internal error: {source} shrank while copying")
                pos += n


def plan_grown_size(base: BaseGeometry, usage: TreeUsage, full: SizePlan,
                    options: Ext4Options) -> int:
    """Blocks of the derived filesystem, or DeriveRefused (see the module docstring).

    ``full`` is the plan the full build makes for the same tree and options.
    """
    fixed = options.size is not None
    blocks = full.layout.blocks
    if blocks < base.blocks:
        raise DeriveRefused(f"the image needs {blocks} blocks, fewer than its base's "
                            f"{base.blocks} (a smaller size or a tree that shrank)")
    want_free = math.ceil(full.promised_free_bytes / BLOCK_SIZE)
    want_inodes = usage.inodes + full.promised_free_inodes
    for _ in range(MAX_GROW_ROUNDS):
        lay = layout(blocks, base.inodes(blocks), inode_size=options.inode_size,
                     journal=options.journal, desc_size=options.desc_size,
                     resize_inode=options.resize_inode, sparse_super=options.sparse_super)
        if lay.blocks != blocks or lay.inodes != base.inodes(blocks):
            if fixed:
                raise DeriveRefused(f"resize2fs would not keep all {blocks} blocks with the "
                                    f"base's inode tables")
            blocks += _MIB_BLOCKS              # a last group too small for its tables
            continue
        if lay.inodes < want_inodes:
            raise DeriveRefused(f"growing the base to {blocks} blocks gives {lay.inodes} "
                                f"inodes, the image needs {want_inodes}")
        reserved = math.floor(blocks * options.reserved_percent / 100)
        free = blocks - lay.overhead - usage.blocks - SLACK_BLOCKS - reserved
        if free >= want_free:
            return blocks
        if fixed:
            raise DeriveRefused(f"{blocks} blocks grown from the base leave no room for "
                                f"the image")
        blocks += -(-(want_free - free) // _MIB_BLOCKS) * _MIB_BLOCKS
    raise AssertionError("internal error: planning the grown size did not converge")


def _run(argv: list[str], what: str, extra_env: dict[str, str]) -> None:
    env = {k: v for k, v in tool_env({**fake_time_env(), **extra_env}).items()
           if not k.startswith(("RESIZE2FS_", "TUNE2FS_")) or k in extra_env}
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                          check=False)
    if proc.returncode != 0:
        raise ToolError(argv[0], what, returncode=proc.returncode,
                        stderr=proc.stderr.decode("utf-8", "backslashreplace"))


def resize(image: Path, blocks: int) -> None:
    """Grow the filesystem in ``image`` to ``blocks`` blocks."""
    # The file is extended first: resize2fs would otherwise write one '0' byte
    # at the new end to make room, into what becomes a free block.
    os.truncate(image, blocks * BLOCK_SIZE)
    _run(["resize2fs", str(image), str(blocks)], f"growing {image.name} to {blocks} blocks",
         {"RESIZE2FS_FORCE_ITABLE_INIT": "1"})


def set_identity(image: Path, *, fs_uuid: str, reserved_blocks: int) -> None:
    """The derived image's own UUID and its reserved block count."""
    _run(["tune2fs", "-U", fs_uuid, "-r", str(reserved_blocks), str(image)],
         f"setting the UUID of {image.name}", {})
