"""Extent trees (ext4 disk layout, "Extent Tree"): the map from file blocks to disk.

``extents_for`` turns allocation runs at logical offsets into extents of at
most 32,768 blocks (the longest initialized extent). ``build_tree`` fits up
to four in the inode's ``i_block``; more become leaf blocks of 340 entries
with index levels above them until the root fits in the inode, each block
closed by its crc32c tail (seeded with the owning inode) when metadata_csum
is on. Tree blocks come from the caller's allocator, after the data.

Trusts its input only to be sorted and non-overlapping (the writer made it).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable

from pipeline.ext4.native.checksum import ext4_crc
from pipeline.ext4.native.geometry import BLOCK_SIZE

__all__ = ["Extent", "extents_for", "build_tree", "root_in_inode", "MAX_EXTENT_BLOCKS",
           "EMPTY_ROOT", "IN_INODE", "one_extent_root"]

Extent = tuple[int, int, int]
"""(logical block, physical block, length)."""

MAX_EXTENT_BLOCKS = 32768
_MAGIC = 0xF30A
IN_INODE = 4                                    # 60-byte i_block: header + 4 entries
_PER_BLOCK = (BLOCK_SIZE - 12) // 12            # 340
_TAIL = 12 + 12 * _PER_BLOCK                    # ext4_extent_tail after eh_max entries
_HEADER = struct.Struct("<HHHHI")               # magic, entries, max, depth, generation
_LEAF = struct.Struct("<IHHI")                  # ee_block, ee_len, ee_start_hi, ee_start_lo
_INDEX = struct.Struct("<IIHH")                 # ei_block, ei_leaf_lo, ei_leaf_hi, ei_unused
_U32 = struct.Struct("<I")

EMPTY_ROOT = _HEADER.pack(_MAGIC, 0, IN_INODE, 0, 0).ljust(60, b"\0")
"""``i_block`` of an empty file with extents, as mke2fs writes it."""


def extents_for(logical: int, runs: Iterable[tuple[int, int]]) -> list[Extent]:
    """Extents for physical ``runs`` mapped one after another from block ``logical``."""
    out: list[Extent] = []
    for start, length in runs:
        while length:
            n = min(length, MAX_EXTENT_BLOCKS)
            if out and out[-1][0] + out[-1][2] == logical and \
                    out[-1][1] + out[-1][2] == start and out[-1][2] + n <= MAX_EXTENT_BLOCKS:
                lo, ph, ln = out.pop()
                out.append((lo, ph, ln + n))
            else:
                out.append((logical, start, n))
            logical, start, length = logical + n, start + n, length - n
    return out


def _node(entries: list[bytes], depth: int, capacity: int) -> bytearray:
    node = bytearray(_HEADER.pack(_MAGIC, len(entries), capacity, depth, 0))
    for e in entries:
        node += e
    return node


_ONE = struct.Struct("<HHHHIIHHI36x")         # header and one leaf, padded to 60 bytes


def one_extent_root(logical: int, physical: int, length: int) -> bytes:
    """``i_block`` holding one extent (most files)."""
    return _ONE.pack(_MAGIC, 1, IN_INODE, 0, 0, logical, length, physical >> 32,
                     physical & 0xFFFFFFFF)


def root_in_inode(extents: list[Extent]) -> bytes:
    """``i_block`` holding up to four extents directly (depth 0)."""
    root = _HEADER.pack(_MAGIC, len(extents), IN_INODE, 0, 0) + b"".join(
        _LEAF.pack(lo, ln, ph >> 32, ph & 0xFFFFFFFF) for lo, ph, ln in extents)
    return root.ljust(60, b"\0")


def build_tree(extents: list[Extent], allocate: Callable[[], int],
               seed: int | None) -> tuple[bytes, list[tuple[int, bytes]]]:
    """(``i_block``, [(block, bytes)] of tree blocks) for ``extents``.

    ``allocate`` gives one block per tree node; ``seed`` is the inode's checksum seed
    (None without metadata_csum).
    """
    level = [_LEAF.pack(lo, ln, ph >> 32, ph & 0xFFFFFFFF) for lo, ph, ln in extents]
    firsts = [lo for lo, _, _ in extents]
    depth = 0
    blocks: list[tuple[int, bytes]] = []
    while len(level) > IN_INODE:
        up, up_firsts = [], []
        for i in range(0, len(level), _PER_BLOCK):
            node = _node(level[i:i + _PER_BLOCK], depth, _PER_BLOCK)
            node = node.ljust(BLOCK_SIZE, b"\0")
            if seed is not None:
                _U32.pack_into(node, _TAIL, ext4_crc(seed, node[:_TAIL]))
            where = allocate()
            blocks.append((where, bytes(node)))
            up.append(_INDEX.pack(firsts[i], where & 0xFFFFFFFF, where >> 32, 0))
            up_firsts.append(firsts[i])
        level, firsts, depth = up, up_firsts, depth + 1
    return bytes(_node(level, depth, IN_INODE).ljust(60, b"\0")), blocks
