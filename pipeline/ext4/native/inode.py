"""The on-disk inode (ext4 disk layout, "Index Nodes"), encoded into an inode table.

``InodeRecord`` is the writer's working state for one inode; ``encode_inode``
packs it with ``struct.pack_into`` straight into the group's inode table
bytearray: 32-bit owners split into low and high halves, the full mode,
sizes and 512-byte block counts with their high words, flags, ``i_block``
(extent root, fast symlink target or device numbers), the external xattr
block, nanosecond times with two epoch bits (large inodes), the in-inode
xattr area, and the crc32c over inode number, generation and body.

Times outside what ext4 holds are clamped (and reported): 1901-12-13 to
2310-04-04 in large inodes (later times would set the sign bit of the epoch
field, which e2fsck reads as pre-1970), 1901 to 2038 in 128-byte inodes.
Device numbers take the kernel's old encoding when both fit in a byte,
else the new one; numbers past a 12-bit major or 20-bit minor are refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pipeline.ext4.native.checksum import Checksums, ext4_crc
from pipeline.ext4.native.errors import BadDevice

__all__ = ["InodeRecord", "encode_inode", "encode_time", "device_block", "EXTRA_ISIZE",
           "EXTENTS_FL", "INDEX_FL", "GOOD_OLD_INODE_SIZE", "time_range_ns"]

GOOD_OLD_INODE_SIZE = 128
EXTRA_ISIZE = 32                          # mke2fs's s_want_extra_isize: through i_projid
EXTENTS_FL = 0x80000
INDEX_FL = 0x1000                         # a hashed (htree) directory
_MIN_SECONDS = -(2**31)
_MAX_SECONDS_LARGE = 3 * 2**32 - 2**31 - 1
_MAX_SECONDS_SMALL = 2**31 - 1
_NS = 10**9
_OLD_DEV_MAX = 0xFF
_MAJOR_MAX = 0xFFF
_MINOR_MAX = 0xFFFFF

# i_mode, i_uid, i_size_lo, i_atime, i_ctime, i_mtime, i_dtime, i_gid, i_links_count,
# i_blocks_lo, i_flags, l_i_version
_HEAD = struct.Struct("<HHIIIIIHHIII")
# i_generation, i_file_acl_lo, i_size_high, i_obso_faddr, l_i_blocks_high,
# l_i_file_acl_high, l_i_uid_high, l_i_gid_high, l_i_checksum_lo, l_i_reserved
_TAIL = struct.Struct("<IIIIHHHHHH")
# i_extra_isize, i_checksum_hi, i_ctime_extra, i_mtime_extra, i_atime_extra, i_crtime,
# i_crtime_extra, i_version_hi, i_projid
_EXTRA = struct.Struct("<HHIIIIIII")
_SMALL = struct.Struct(_HEAD.format + "60s" + _TAIL.format[1:])
_LARGE = struct.Struct(_SMALL.format + _EXTRA.format[1:])
_PLAIN_NS = 2**31 * 10**9                   # times from 0 up to here need no epoch bits
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_CSUM_LO = 0x7C
_CSUM_HI = 0x82


def time_range_ns(*, large: bool) -> tuple[int, int]:
    """(first, last) nanosecond time an inode holds without clamping."""
    high = _MAX_SECONDS_LARGE if large else _MAX_SECONDS_SMALL
    return _MIN_SECONDS * _NS, (high + 1) * _NS - 1


def encode_time(ns: int, *, large: bool) -> tuple[int, int]:
    """(low 32 bits of the seconds, ``*_extra``: nanoseconds << 2 | epoch bits), clamped."""
    seconds, nanos = divmod(ns, _NS)
    high = _MAX_SECONDS_LARGE if large else _MAX_SECONDS_SMALL
    if not _MIN_SECONDS <= seconds <= high:
        seconds, nanos = min(max(seconds, _MIN_SECONDS), high), 0
    low = seconds & 0xFFFFFFFF
    signed_low = low - 2**32 if low >= 2**31 else low
    return low, (nanos << 2) | ((seconds - signed_low) >> 32) if large else 0


def device_block(path: str, major: int, minor: int) -> bytes:
    """``i_block`` of a device node, as the kernel writes it (ext4_do_update_inode)."""
    if not (0 <= major <= _MAJOR_MAX and 0 <= minor <= _MINOR_MAX):
        raise BadDevice(path, f"device {major}:{minor} is past ext4's limits (major at "
                              f"most {_MAJOR_MAX}, minor at most {_MINOR_MAX})")
    if major <= _OLD_DEV_MAX and minor <= _OLD_DEV_MAX:
        return struct.pack("<I", major << 8 | minor).ljust(60, b"\0")
    new = (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12)
    return struct.pack("<II", 0, new).ljust(60, b"\0")


@dataclass(slots=True)
class InodeRecord:
    """One inode being built (mutable while blocks are allocated for it)."""

    number: int
    mode: int
    """Type bits and permission bits."""
    uid: int
    gid: int
    time_ns: int
    """atime, ctime, mtime and crtime alike (the layers carry only mtime)."""
    links: int = 1
    size: int = 0
    blocks: int = 0
    """Filesystem blocks it owns (data, tree, xattr block)."""
    flags: int = 0
    i_block: bytes = bytes(60)
    xattr_block: int = 0
    xattr_body: bytes = b""
    """The in-inode xattr area (magic and entries), empty when none."""


def encode_inode(table: bytearray, offset: int, rec: InodeRecord, *, inode_size: int,
                 csums: Checksums) -> None:
    large = inode_size > GOOD_OLD_INODE_SIZE
    ns = rec.time_ns
    if 0 <= ns < _PLAIN_NS:                     # 1970-2038: no clamping, no epoch bits
        t_lo, nanos = divmod(ns, _NS)
        t_extra = nanos << 2 if large else 0
    else:
        t_lo, t_extra = encode_time(ns, large=large)
    sectors, size, xblock, uid, gid = rec.blocks * 8, rec.size, rec.xattr_block, rec.uid, rec.gid
    if large:                                   # the first 160 bytes in one call
        _LARGE.pack_into(table, offset, rec.mode, uid & 0xFFFF, size & 0xFFFFFFFF,
                         t_lo, t_lo, t_lo, 0, gid & 0xFFFF, rec.links, sectors & 0xFFFFFFFF,
                         rec.flags, 0, rec.i_block, 0, xblock & 0xFFFFFFFF, size >> 32, 0,
                         sectors >> 32, xblock >> 32, uid >> 16, gid >> 16, 0, 0,
                         EXTRA_ISIZE, 0, t_extra, t_extra, t_extra, t_lo, t_extra, 0, 0)
        if rec.xattr_body:
            start = offset + GOOD_OLD_INODE_SIZE + EXTRA_ISIZE
            table[start:start + len(rec.xattr_body)] = rec.xattr_body
    else:
        _SMALL.pack_into(table, offset, rec.mode, uid & 0xFFFF, size & 0xFFFFFFFF,
                         t_lo, t_lo, t_lo, 0, gid & 0xFFFF, rec.links, sectors & 0xFFFFFFFF,
                         rec.flags, 0, rec.i_block, 0, xblock & 0xFFFFFFFF, size >> 32, 0,
                         sectors >> 32, xblock >> 32, uid >> 16, gid >> 16, 0, 0)
    if csums.enabled:
        crc = ext4_crc(csums.inode_seed(rec.number),
                       memoryview(table)[offset:offset + inode_size])
        _U16.pack_into(table, offset + _CSUM_LO, crc & 0xFFFF)
        if large:
            _U16.pack_into(table, offset + _CSUM_HI, crc >> 16)
