"""What mkfs.ext4 wrote into each inode, read straight from the image's inode tables.

The fixup script writes only the fields that differ from what the entries
declare (skipping a write of a value already there gives the same bytes), so
it must know what mkfs wrote: mode, owners, the four times with their
``*_extra`` fields, and the names of xattrs mkfs copied from the host.
``read_inodes`` finds each group's inode table from the superblock and group
descriptors (ext4 disk layout, "Block Group Descriptors") and unpacks the
inodes (ext4 disk layout, "Index Nodes", "Extended Attributes").

Reads only our own image, right after mkfs.ext4 wrote it; an image that ends
inside its own metadata, or an xattr name index we cannot name, is an
internal error.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from pipeline.ext4.disk import XATTR_BLOCK_HEADER, XATTR_ENTRY, XATTR_MAGIC, XATTR_PREFIXES

__all__ = ["InodeFields", "read_inodes"]

# The on-disk inode (ext4 disk layout, "Index Nodes"): i_mode, i_uid, i_atime,
# i_ctime, i_mtime, i_gid, i_links_count, i_file_acl_lo, l_i_file_acl_high,
# l_i_uid_high, l_i_gid_high; then, in large inodes, i_extra_isize,
# i_ctime_extra, i_mtime_extra, i_atime_extra, i_crtime, i_crtime_extra.
_SMALL_INODE = struct.Struct("<HH4xIII4xHH76xI10xHHH4x")
_LARGE_INODE = struct.Struct("<HH4xIII4xHH76xI10xHHH4xH2xIIIII")
# Offset of each *_extra / crtime field past byte 128; present if i_extra_isize covers it.
_EXTRA_END = {"ctime_extra": 8, "mtime_extra": 12, "atime_extra": 16, "crtime": 20,
              "crtime_extra": 24}
_FULL_EXTRA = max(_EXTRA_END.values())
_U32 = struct.Struct("<I")


class InodeFields(NamedTuple):
    """What an inode holds, read back from the image, in the fields the fixup sets."""

    mode: int
    uid: int
    gid: int
    seconds: tuple[int, ...]
    """Low 32 bits of atime, ctime, mtime and (large inodes) crtime."""
    extras: tuple[int | None, ...]
    """Their ``*_extra`` fields; None where the inode has none."""
    xattrs: tuple[str, ...]
    """Names of the extended attributes it holds, in the inode or in a block."""
    links: int = 0
    """i_links_count."""
    xattr_block: int = 0
    """The external xattr block (i_file_acl), 0 if none."""


def read_inodes(image: Path, numbers: Iterable[int]) -> dict[int, InodeFields]:
    """The fixup-relevant fields of inodes ``numbers``, from the inode tables on disk.

    Reads only our own image, right after mkfs.ext4 wrote it; the superblock
    and group descriptors locate each group's inode table (ext4 disk layout,
    "Block Group Descriptors").
    """
    wanted = sorted(set(numbers))
    out: dict[int, InodeFields] = {}
    if not wanted:
        return out
    with open(image, "rb") as f:
        fd = f.fileno()
        sb = os.pread(fd, 1024, 1024)
        first_data, log_block = struct.unpack_from("<II", sb, 0x14)
        per_group, = struct.unpack_from("<I", sb, 0x28)
        inode_size, = struct.unpack_from("<H", sb, 0x58)
        incompat, = struct.unpack_from("<I", sb, 0x60)
        block = 1024 << log_block
        desc = struct.unpack_from("<H", sb, 0xFE)[0] if incompat & 0x80 else 32
        groups = (wanted[-1] - 1) // per_group + 1
        gdt = _pread(fd, groups * desc, (first_data + 1) * block)
        for group, members in itertools.groupby(wanted, key=lambda n: (n - 1) // per_group):
            numbers_in = list(members)
            table = struct.unpack_from("<I", gdt, group * desc + 8)[0]
            if desc >= 64:
                table |= struct.unpack_from("<I", gdt, group * desc + 0x28)[0] << 32
            first = (numbers_in[0] - 1) % per_group
            last = (numbers_in[-1] - 1) % per_group
            raw = _pread(fd, (last - first + 1) * inode_size,
                         table * block + first * inode_size)
            for number in numbers_in:
                offset = ((number - 1) % per_group - first) * inode_size
                out[number] = _inode_fields(raw, offset, inode_size, fd, block)
    return out


def _pread(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise AssertionError(f"internal error: the image ends inside its own metadata "
                             f"(read {len(data)} of {size} bytes at {offset})")
    return data


def _inode_fields(raw: bytes, offset: int, inode_size: int, fd: int,
                  block: int) -> InodeFields:
    names: list[str] = []
    if inode_size <= 128:
        (mode, uid, atime, ctime, mtime, gid, links, acl_lo, acl_hi, uid_hi,
         gid_hi) = _SMALL_INODE.unpack_from(raw, offset)
        seconds: tuple[int, ...] = (atime, ctime, mtime)
        extras: tuple[int | None, ...] = (None, None, None)
    else:
        (mode, uid, atime, ctime, mtime, gid, links, acl_lo, acl_hi, uid_hi, gid_hi, isize,
         ctime_x, mtime_x, atime_x, crtime, crtime_x) = _LARGE_INODE.unpack_from(raw, offset)
        if isize >= _FULL_EXTRA:             # what mke2fs writes: every field present
            seconds = (atime, ctime, mtime, crtime)
            extras = (atime_x, ctime_x, mtime_x, crtime_x)
        else:
            has = {name: end <= isize for name, end in _EXTRA_END.items()}
            seconds = (atime, ctime, mtime, crtime if has["crtime"] else -1)
            extras = (atime_x if has["atime_extra"] else None,
                      ctime_x if has["ctime_extra"] else None,
                      mtime_x if has["mtime_extra"] else None,
                      crtime_x if has["crtime_extra"] else None)
        start = offset + 128 + isize
        if start + 4 <= offset + inode_size and \
                _U32.unpack_from(raw, start)[0] == XATTR_MAGIC:
            names = _xattr_names(raw, start + 4, offset + inode_size)
    acl = acl_lo | acl_hi << 32
    if acl:
        data = _pread(fd, block, acl * block)
        if _U32.unpack_from(data, 0)[0] == XATTR_MAGIC:
            names += _xattr_names(data, XATTR_BLOCK_HEADER, block)
    return InodeFields(mode, uid | uid_hi << 16, gid | gid_hi << 16, seconds, extras,
                       tuple(sorted(set(names))) if names else (), links, acl)


def _xattr_names(data: bytes, pos: int, end: int) -> list[str]:
    """Names of the xattr entries from ``pos`` (ext4 disk layout, "Extended Attributes")."""
    names = []
    while pos + XATTR_ENTRY.size <= end and _U32.unpack_from(data, pos)[0] != 0:
        name_len, index = data[pos], data[pos + 1]
        prefix = XATTR_PREFIXES.get(index)
        if prefix is None:
            raise AssertionError(f"internal error: mkfs.ext4 stored an extended attribute "
                                 f"with name index {index}, which this builder cannot name")
        suffix = data[pos + XATTR_ENTRY.size:pos + XATTR_ENTRY.size + name_len]
        names.append(prefix + os.fsdecode(suffix))
        pos += (XATTR_ENTRY.size + name_len + 3) & ~3
    return names
