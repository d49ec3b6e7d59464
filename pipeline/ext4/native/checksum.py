"""crc32c the way ext4's metadata_csum uses it (ext4 disk layout, "Checksums").

ext4 seeds the Castagnoli CRC with a value and keeps the register without the
final inversion (``ext2fs_crc32c_le`` in lib/ext2fs/csum.c); the crc32c
package computes the standard, finalised CRC with hardware instructions, so
the two are converted at this boundary. The filesystem seed is the CRC of the
UUID; each inode's seed continues it with the inode number and generation.

Trusts nothing: it only computes.
"""

from __future__ import annotations

import struct

import crc32c as _crc32c

__all__ = ["ext4_crc", "Checksums"]

_ALL_ONES = 0xFFFFFFFF
_U32 = struct.Struct("<I")
_TWO_U32 = struct.Struct("<II")


def ext4_crc(seed: int, data: bytes | bytearray | memoryview) -> int:
    """ext2fs_crc32c_le(seed, data): crc32c from register ``seed``, not inverted at the end."""
    return int(_crc32c.crc32c(data, seed ^ _ALL_ONES)) ^ _ALL_ONES


class Checksums:
    """The seeds of one filesystem's metadata checksums, or none when metadata_csum is off."""

    __slots__ = ("fs_seed", "_inode_seeds")

    def __init__(self, uuid: bytes, *, enabled: bool) -> None:
        self.fs_seed: int | None = ext4_crc(_ALL_ONES, uuid) if enabled else None
        self._inode_seeds: dict[int, int] = {}

    @property
    def enabled(self) -> bool:
        return self.fs_seed is not None

    def inode_seed(self, ino: int, generation: int = 0) -> int:
        """The seed of everything an inode owns (extent, directory, htree blocks)."""
        assert self.fs_seed is not None, "internal error: checksums are off"
        if generation:
            return ext4_crc(ext4_crc(self.fs_seed, _U32.pack(ino)), _U32.pack(generation))
        seed = self._inode_seeds.get(ino)
        if seed is None:                    # one CRC over both words is the CRC of each
            seed = ext4_crc(self.fs_seed, _TWO_U32.pack(ino, 0))
            self._inode_seeds[ino] = seed
        return seed
