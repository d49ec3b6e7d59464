"""The internal journal: inode 8's blocks, headed by a jbd2 superblock (version 2).

What mke2fs 1.47 writes for an internal journal, checked with dumpe2fs:
big-endian fields, block size, length, first log block 1, sequence 1, the
filesystem's UUID, one user, no jbd2 features (metadata_csum does not turn
on the journal's csum v3: the kernel does, when it writes to it). The log
itself is zeros, which a sparse image gives for free: an empty, clean
journal that needs no recovery.

Trusts nothing: pure encoding.
"""

from __future__ import annotations

import struct

from pipeline.ext4.native.geometry import BLOCK_SIZE

__all__ = ["journal_superblock", "JOURNAL_INO", "JNL_BACKUP_BLOCKS"]

JOURNAL_INO = 8
JNL_BACKUP_BLOCKS = 1                      # s_jnl_backup_type: i_block copied to s_jnl_blocks
_MAGIC = 0xC03B3998
_SUPERBLOCK_V2 = 4
_FIRST_LOG_BLOCK = 1
_FIRST_SEQUENCE = 1
_USERS = 1


def journal_superblock(blocks: int, uuid: bytes) -> bytes:
    """Block 0 of a fresh journal of ``blocks`` blocks."""
    sb = bytearray(BLOCK_SIZE)
    # header (magic, type, sequence), s_blocksize, s_maxlen, s_first, s_sequence, s_start
    struct.pack_into(">IIIIIIII", sb, 0, _MAGIC, _SUPERBLOCK_V2, 0, BLOCK_SIZE, blocks,
                     _FIRST_LOG_BLOCK, _FIRST_SEQUENCE, 0)
    sb[0x30:0x40] = uuid
    struct.pack_into(">I", sb, 0x40, _USERS)
    return bytes(sb)
