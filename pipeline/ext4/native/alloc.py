"""Block allocation: one forward cursor over the free blocks, and the block bitmap.

Blocks are handed out strictly in order, from the first block after the
metadata of the first flex group to the end, stepping over the metadata runs
that ``place_metadata`` laid down (superblock backups, bitmaps and inode tables
of later flex groups). Nothing is ever freed, so allocation is a walk, and the
same requests in the same order give the same blocks on every host.

``UsedBlocks`` is the whole filesystem's block bitmap as one bytearray (one bit
per block, 4 KiB of it per group); ranges are set a byte at a time, never a
bit at a time over long runs.

Refuses to go past the end: running out of blocks is an Ext4Error for a fixed
size (the plan's estimate is checked again here).
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.ext4.native.geometry import BLOCKS_PER_GROUP
from pipeline.ext4.native.inputs import Ext4Error

__all__ = ["UsedBlocks", "Allocator", "Run"]

Run = tuple[int, int]
"""(first block, number of blocks)."""


class UsedBlocks:
    """A bitmap of every block of the filesystem, padded to whole groups."""

    __slots__ = ("bits", "blocks")

    def __init__(self, blocks: int, groups: int) -> None:
        self.blocks = blocks
        self.bits = bytearray(groups * BLOCKS_PER_GROUP // 8)
        self.mark(blocks, groups * BLOCKS_PER_GROUP - blocks)    # past the end: in use

    def mark(self, start: int, count: int) -> None:
        end = start + count
        bits = self.bits
        while start < end and start & 7:
            bits[start >> 3] |= 1 << (start & 7)
            start += 1
        whole = (end - start) >> 3
        if whole > 0:
            bits[start >> 3:(start >> 3) + whole] = b"\xff" * whole
            start += whole << 3
        while start < end:
            bits[start >> 3] |= 1 << (start & 7)
            start += 1

    def group_bitmap(self, group: int) -> bytes:
        first = group * BLOCKS_PER_GROUP // 8
        return bytes(self.bits[first:first + BLOCKS_PER_GROUP // 8])

    def free_in_group(self, group: int) -> int:
        used = int.from_bytes(self.group_bitmap(group), "little").bit_count()
        return BLOCKS_PER_GROUP - used


class Allocator:
    """Hands out blocks in order, skipping ``reserved`` runs.

    Nothing is marked in ``used`` while blocks are handed out: everything below
    the cursor is either reserved (marked by the caller) or taken, so ``mark_taken``
    marks the whole range once at the end instead of once per request.
    """

    def __init__(self, used: UsedBlocks, reserved: Sequence[Run], start: int) -> None:
        self._used = used
        self._reserved = sorted(reserved)
        self._next = 0                  # first reserved run that may lie ahead
        self._start = start
        self.cursor = start
        self._limit = start             # the cursor may run up to here without a check
        self.allocated = 0

    def take(self, count: int) -> list[Run]:
        """``count`` blocks as runs in block order (split only around reserved runs)."""
        cursor = self.cursor
        if cursor + count <= self._limit:       # the common case: no reserved run ahead
            self.cursor = cursor + count
            self.allocated += count
            return [(cursor, count)]
        runs: list[Run] = []
        while count > 0:
            self._skip_reserved()
            length = min(count, self._limit - self.cursor)
            if length <= 0:
                raise Ext4Error(f"the filesystem ran out of blocks ({self.allocated} "
                                f"allocated); raise `size` or use \"auto\"")
            runs.append((self.cursor, length))
            self.cursor += length
            self.allocated += length
            count -= length
        return runs

    def take_one(self) -> int:
        cursor = self.cursor
        if cursor < self._limit:
            self.cursor = cursor + 1
            self.allocated += 1
            return cursor
        return self.take(1)[0][0]

    def mark_taken(self) -> None:
        """Mark every block handed out so far in ``used``."""
        self._used.mark(self._start, self.cursor - self._start)

    def _skip_reserved(self) -> None:
        while self._next < len(self._reserved):
            start, length = self._reserved[self._next]
            if self.cursor >= start + length:
                self._next += 1
            elif self.cursor >= start:
                self.cursor = start + length
                self._next += 1
            else:
                break
        self._limit = self._used.blocks
        if self._next < len(self._reserved):
            self._limit = min(self._limit, self._reserved[self._next][0])
