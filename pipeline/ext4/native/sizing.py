"""How many blocks the tree will take, counted before anything is placed.

Exact for file data (holes excluded), slow symlinks and xattr blocks; an
upper bound for directories, so the size can be planned, and file data
placed and copied, before any directory is hashed: a directory packed
first-fit fills every block but its last to more than ``room - largest
record``, so it needs at most ``total / (room - largest) + 1`` leaves, plus
its index blocks. Extent tree blocks are counted from the extents a file
needs; splits around metadata runs are covered by the size planner's slack.

Trusts nothing: arithmetic on names and sizes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from pipeline.ext4.native.geometry import BLOCK_SIZE

__all__ = ["dir_blocks_bound", "tree_blocks", "LOST_FOUND_BLOCKS"]

LOST_FOUND_BLOCKS = 4                       # mke2fs grows lost+found to 16 KiB
_TAIL = 12                                  # metadata_csum tail entry of a leaf
_DOTS = 24                                  # "." and ".." records
_EXTENTS_IN_INODE = 4
_EXTENTS_PER_BLOCK = 340
_ROOT_LIMIT = 507                           # dx_root entries (with the csum tail; 508 without)
_NODE_LIMIT = 510                           # dx_node entries (511 without)
_SPLIT_EXTENTS = 2                          # extents a file may gain around metadata runs


def _rec_len(name: bytes) -> int:
    return (8 + len(name) + 3) & ~3


def dir_blocks_bound(names: Iterable[bytes], *, csum: bool, htree: bool,
                     min_blocks: int = 1) -> int:
    """At most how many blocks ``directory_blocks`` gives a directory of ``names``."""
    room = BLOCK_SIZE - (_TAIL if csum else 0)
    sizes = [_rec_len(n) for n in names]
    total = _DOTS + sum(sizes)
    if total <= room:
        return max(1, min_blocks)
    leaves = total // (room - max(sizes)) + 1
    if not htree:
        return max(leaves, min_blocks)
    index, level = 1, leaves
    while level > _ROOT_LIMIT:
        level = math.ceil(level / _NODE_LIMIT)
        index += level
    return leaves + index


def tree_blocks(extents: int) -> int:
    """Extent tree blocks for ``extents`` extents, with room for splits."""
    n = extents + _SPLIT_EXTENTS
    total = 0
    while n > _EXTENTS_IN_INODE:
        n = -(-n // _EXTENTS_PER_BLOCK)
        total += n
    return total
