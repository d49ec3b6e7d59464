"""Blocks handed out in order and written as they are placed; extent trees mapped.

``Placer`` owns the block bitmap and the forward allocator over one image
file: ``take`` allocates runs, ``put`` writes blocks, ``map_extents`` builds an
inode's extent tree (its index and leaf blocks allocated right after) and
records the root in the inode. Blocks put one after another (a thousand
small directories, their symlinks and xattr blocks) are gathered and written
in one call per contiguous stretch of at most 4 MiB; ``finish`` writes the rest
and marks the allocated blocks in the bitmap.

Trusts the writer's requests; running out of blocks is an Ext4Error.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.ext4.native.alloc import Allocator, Run, UsedBlocks
from pipeline.ext4.native.checksum import Checksums
from pipeline.ext4.native.data import write_at
from pipeline.ext4.native.extents import (
    IN_INODE,
    Extent,
    build_tree,
    one_extent_root,
    root_in_inode,
)
from pipeline.ext4.native.geometry import BLOCK_SIZE, Geometry, Placement
from pipeline.ext4.native.inode import InodeRecord

__all__ = ["Placer"]

_GATHER_MAX = 4 << 20                       # bytes of consecutive blocks written at once


class Placer:
    def __init__(self, fd: int, geo: Geometry, placement: Placement, csums: Checksums) -> None:
        self.fd = fd
        self.csums = csums
        self.used = UsedBlocks(geo.blocks, geo.groups)
        for start, length in placement.used:
            self.used.mark(start, length)
        self._alloc = Allocator(self.used, placement.used, 0)
        self._gathered: list[bytes] = []
        self._gather_start = 0
        self._gather_end = 0

    def take(self, count: int) -> list[Run]:
        return self._alloc.take(count)

    def take_one(self) -> int:
        return self._alloc.take_one()

    @property
    def cursor(self) -> int:
        """The block the next request starts from (or after the metadata run there)."""
        return self._alloc.cursor

    def put(self, block: int, data: bytes) -> None:
        """Write whole blocks of ``data`` at ``block`` (gathered with its neighbours)."""
        if block != self._gather_end or \
                (self._gather_end - self._gather_start) * BLOCK_SIZE >= _GATHER_MAX:
            self.flush()
            self._gather_start = self._gather_end = block
        self._gathered.append(data)
        self._gather_end += -(-len(data) // BLOCK_SIZE)

    def flush(self) -> None:
        if self._gathered:
            write_at(self.fd, b"".join(self._gathered), self._gather_start * BLOCK_SIZE)
            self._gathered = []

    def finish(self) -> UsedBlocks:
        """Write what is gathered; the block bitmap with every block handed out marked."""
        self.flush()
        self._alloc.mark_taken()
        return self.used

    def put_runs(self, runs: Sequence[Run], blocks: Sequence[bytes]) -> None:
        """Write ``blocks`` (in logical order) into ``runs``, one write per run."""
        k = 0
        for start, length in runs:
            self.put(start, b"".join(blocks[k:k + length]))
            k += length

    def map_extents(self, rec: InodeRecord, extents: list[Extent]) -> None:
        if len(extents) <= IN_INODE:
            rec.i_block = one_extent_root(*extents[0]) if len(extents) == 1 \
                else root_in_inode(extents)
            return
        seed = self.csums.inode_seed(rec.number) if self.csums.enabled else None
        rec.i_block, tree = build_tree(extents, self.take_one, seed)
        for where, data in tree:
            self.put(where, data)
        rec.blocks += len(tree)
