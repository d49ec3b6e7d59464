"""Directory blocks (ext4 disk layout, "Directory Entries", "Hash Tree Directories").

A directory whose entries fit one block is linear: ``.``, ``..`` and the
names in byte order, the last record stretched to the end. A larger one,
with dir_index, is an htree: block 0 is the dx_root (``.``, ``..``, the root
info naming half MD4 and the depth, then (hash, block) entries), then the
dx_node blocks of any further index level, then the leaves: every entry
sorted by (hash, minor hash, name) and packed full, each leaf's index hash
its first entry's hash, with the low bit set when that hash continues from
the previous leaf. Two levels of index (three with large_dir) hold about
250,000 (100 million) leaves. Without dir_index, a large directory is linear.

With metadata_csum every leaf ends in a 12-byte tail entry holding the
block's crc32c, and every index block in a dx_tail (limit is one less).

Refuses a directory deeper than its levels allow (``UnrepresentableEntry``).
Names are checked by the writer, which owns the path.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.ext4.native.checksum import ext4_crc
from pipeline.ext4.native.dirhash import half_md4_many
from pipeline.ext4.native.errors import UnrepresentableEntry
from pipeline.ext4.native.geometry import BLOCK_SIZE

__all__ = ["Dirent", "HtreeParams", "directory_blocks", "FT_DIR"]

Dirent = tuple[bytes, int, int]
"""(name, inode, file type)."""

FT_DIR = 2
_DIRENT = struct.Struct("<IHBB")             # inode, rec_len, name_len, file_type
_TAIL = struct.Struct("<IHBBI")              # inode 0, rec_len 12, 0, 0xDE, checksum
_TAIL_SIZE = 12
_TAIL_TYPE = 0xDE
_ROOT_INFO = struct.Struct("<IBBBB")         # reserved, hash_version, info_length, levels, flags
_HALF_MD4 = 1
_COUNT = struct.Struct("<HHI")               # limit, count, block of entry 0
_ENTRY = struct.Struct("<II")                # hash, block
_ROOT_COUNT_OFFSET = 32                      # ".", "..", dx_root_info
_NODE_COUNT_OFFSET = 8                       # one empty dirent spanning the block
_DX_TAIL = 8                                 # dt_reserved, dt_checksum


@dataclass(frozen=True, slots=True)
class HtreeParams:
    """How this filesystem hashes names; None in place of it means ^dir_index."""

    seed: tuple[int, int, int, int]
    signed: bool
    max_levels: int
    """Index levels allowed: 2, or 3 with large_dir."""


def _rec_len(name: bytes) -> int:
    return (8 + len(name) + 3) & ~3


def _leaves(records: Sequence[Dirent], seed: int | None) -> list[bytearray]:
    """Records packed first-fit in order into leaf blocks (each with its tail if csum)."""
    room = BLOCK_SIZE - (_TAIL_SIZE if seed is not None else 0)
    blocks: list[bytearray] = []
    block = bytearray(BLOCK_SIZE)
    pos, last = 0, -1
    for name, ino, ftype in records:
        size = _rec_len(name)
        if pos + size > room:
            _close(block, last, room, seed)
            blocks.append(block)
            block, pos = bytearray(BLOCK_SIZE), 0
        _DIRENT.pack_into(block, pos, ino, size, len(name), ftype)
        block[pos + 8:pos + 8 + len(name)] = name
        last, pos = pos, pos + size
    _close(block, last, room, seed)
    blocks.append(block)
    return blocks


def _close(block: bytearray, last: int, room: int, seed: int | None) -> None:
    if last < 0:                             # an empty block: one unused entry spans it
        _DIRENT.pack_into(block, 0, 0, room, 0, 0)
    else:
        struct.pack_into("<H", block, last + 4, room - last)
    if seed is not None:
        _TAIL.pack_into(block, room, 0, _TAIL_SIZE, 0, _TAIL_TYPE, ext4_crc(seed, block[:room]))


def _index_block(block: bytearray, count_offset: int, entries: Sequence[tuple[int, int]],
                 seed: int | None) -> None:
    limit = (BLOCK_SIZE - count_offset - (_DX_TAIL if seed is not None else 0)) // 8
    _COUNT.pack_into(block, count_offset, limit, len(entries), entries[0][1])
    for i, (h, where) in enumerate(entries[1:], start=1):
        _ENTRY.pack_into(block, count_offset + 8 * i, h, where)
    if seed is not None:
        tail = count_offset + 8 * limit
        crc = ext4_crc(seed, block[:count_offset + 8 * len(entries)])
        # dx_tail with dt_checksum still zero: reserved word and checksum field alike.
        struct.pack_into("<I", block, tail + 4, ext4_crc(crc, block[tail:tail + _DX_TAIL]))


def _limit(count_offset: int, seed: int | None) -> int:
    return (BLOCK_SIZE - count_offset - (_DX_TAIL if seed is not None else 0)) // 8


def directory_blocks(path: str, own: int, parent: int, entries: Sequence[Dirent], *,
                     seed: int | None, htree: HtreeParams | None,
                     min_blocks: int = 1) -> tuple[list[bytes], bool]:
    """(blocks in logical order, whether it is an htree) for one directory.

    ``entries`` exclude ``.`` and ``..`` and are in the order a linear directory
    lists them; ``seed`` is the directory inode's checksum seed (None: no csum);
    ``min_blocks`` pads a linear directory with empty blocks (lost+found).
    """
    dots: list[Dirent] = [(b".", own, FT_DIR), (b"..", parent, FT_DIR)]
    linear = _leaves([*dots, *entries], seed)
    if len(linear) == 1 or htree is None:
        while len(linear) < min_blocks:
            linear.append(_leaves([], seed)[0])
        return [bytes(b) for b in linear], False
    hashes = half_md4_many([name for name, _, _ in entries], htree.seed, signed=htree.signed)
    hashed = sorted(zip(hashes, entries, strict=True))
    leaves = _leaves([dirent for _, dirent in hashed], seed)
    # The first hash of each leaf: the records were packed in order, so walk them again.
    firsts: list[int] = []
    i = 0
    for leaf in leaves:
        h = hashed[i][0][0]
        firsts.append(h | 1 if i and hashed[i - 1][0][0] == h else h)
        pos = 0
        while pos < BLOCK_SIZE and struct.unpack_from("<I", leaf, pos)[0] != 0:
            i += 1
            pos += struct.unpack_from("<H", leaf, pos + 4)[0]
    root_limit, node_limit = _limit(_ROOT_COUNT_OFFSET, seed), _limit(_NODE_COUNT_OFFSET, seed)
    counts: list[int] = []
    n = len(leaves)
    while n > root_limit:
        n = -(-n // node_limit)
        counts.append(n)
    if len(counts) >= htree.max_levels:
        raise UnrepresentableEntry(path, f"the directory needs {len(counts) + 1} htree index "
                                         f"levels for {len(entries)} entries; ext4 allows "
                                         f"{htree.max_levels} (turn on large_dir)")
    next_block = 1 + sum(counts)
    level = [(h, next_block + k) for k, h in enumerate(firsts)]
    nodes: list[bytes] = []
    next_node = 1
    for _ in counts:
        up = []
        for k in range(0, len(level), node_limit):
            chunk = level[k:k + node_limit]
            block = bytearray(BLOCK_SIZE)
            _DIRENT.pack_into(block, 0, 0, BLOCK_SIZE, 0, 0)
            _index_block(block, _NODE_COUNT_OFFSET, chunk, seed)
            nodes.append(bytes(block))
            up.append((chunk[0][0], next_node))
            next_node += 1
        level = up
    root = bytearray(BLOCK_SIZE)
    _DIRENT.pack_into(root, 0, own, 12, 1, FT_DIR)
    root[8:9] = b"."
    _DIRENT.pack_into(root, 12, parent, BLOCK_SIZE - 12, 2, FT_DIR)
    root[20:22] = b".."
    _ROOT_INFO.pack_into(root, 24, 0, _HALF_MD4, 8, len(counts), 0)
    _index_block(root, _ROOT_COUNT_OFFSET, level, seed)
    return [bytes(root), *nodes, *(bytes(b) for b in leaves)], True
