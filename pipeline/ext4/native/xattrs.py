"""Extended attributes (ext4 disk layout, "Extended Attributes"): in the inode, then a block.

Names are stored as a prefix index and a suffix (``user.`` 1, POSIX ACLs 2
and 3, ``trusted.`` 4, ``security.`` 6); POSIX ACL values are converted to
ext4's compact on-disk form, as the kernel and libext2fs do. Entries are
sorted by (index, name length, name), the order the kernel's block lookup
relies on; each fills the inode's spare space while it fits and the rest go
to one external block with its header, hashes and crc32c. Values are packed
from the end of their area down.

Refuses (``BadXattr``, ``XattrTooLarge``): names without an ext4 prefix or
with a suffix over 255 bytes, malformed ACLs, and sets that fit neither the
inode nor one block.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.ext4.native.checksum import ext4_crc
from pipeline.ext4.native.errors import BadXattr, XattrTooLarge
from pipeline.ext4.native.geometry import BLOCK_SIZE

__all__ = ["Xattr", "XattrLayout", "lay_out_xattrs", "encode_block", "MAGIC"]

MAGIC = 0xEA020000
_NAME_MAX = 255
_ENTRY = struct.Struct("<BBHIII")     # name_len, name_index, value_offs, value_inum, size, hash
_BLOCK_HEADER = 32
_END_MARK = 4                          # four zero bytes after the last entry
# Longest prefix first: "system.posix_acl_access" before any shorter match.
_PREFIXES = (("system.posix_acl_access", 2), ("system.posix_acl_default", 3),
             ("user.", 1), ("trusted.", 4), ("security.", 6))
_ACL_XATTR_VERSION = 2
_ACL_DISK_VERSION = 1
_ACL_WITH_ID = (0x02, 0x08)           # ACL_USER, ACL_GROUP carry an id on disk
_ACL_TAGS = (0x01, 0x02, 0x04, 0x08, 0x10, 0x20)


@dataclass(frozen=True, slots=True)
class Xattr:
    """One attribute as ext4 stores it."""

    index: int
    name: bytes
    value: bytes

    @property
    def entry_size(self) -> int:
        return (_ENTRY.size + len(self.name) + 3) & ~3

    @property
    def value_size(self) -> int:
        return (len(self.value) + 3) & ~3


@dataclass(frozen=True, slots=True)
class XattrLayout:
    """Where one inode's attributes go."""

    body: bytes
    """The in-inode area (magic, entries, values), or b"" when none fit or none exist."""
    block: tuple[Xattr, ...]
    """Attributes for the external block; empty when none."""


def _disk_form(path: str, name: str, value: bytes) -> Xattr:
    for prefix, index in _PREFIXES:
        if name.startswith(prefix):
            suffix = os.fsencode(name[len(prefix):])
            if index in (2, 3):
                if suffix:
                    break
                value = _acl_to_disk(path, name, value)
            elif not suffix:
                break
            if len(suffix) > _NAME_MAX:
                raise BadXattr(path, f"the name is {len(suffix)} bytes after its prefix, "
                                     f"more than ext4's {_NAME_MAX}", attribute=name)
            return Xattr(index, suffix, value)
    raise BadXattr(path, "ext4 stores only user., trusted., security. and POSIX ACL "
                         "attributes; drop it from the image", attribute=name)


def _acl_to_disk(path: str, name: str, value: bytes) -> bytes:
    """The xattr form of a POSIX ACL (version 2, 8-byte entries) to ext4's (version 1)."""
    if len(value) < 4 or (len(value) - 4) % 8 or \
            struct.unpack_from("<I", value)[0] != _ACL_XATTR_VERSION:
        raise BadXattr(path, "the value is not a version 2 POSIX ACL", attribute=name)
    out = [struct.pack("<I", _ACL_DISK_VERSION)]
    for tag, perm, ident in struct.iter_unpack("<HHI", value[4:]):
        if tag not in _ACL_TAGS:
            raise BadXattr(path, f"the POSIX ACL holds unknown tag {tag:#x}", attribute=name)
        out.append(struct.pack("<HHI", tag, perm, ident) if tag in _ACL_WITH_ID
                   else struct.pack("<HH", tag, perm))
    return b"".join(out)


def entry_hash(x: Xattr) -> int:
    """ext4_xattr_hash_entry: the name's bytes (unsigned), then the value's 32-bit words."""
    h = 0
    for c in x.name:
        h = ((h << 5) ^ (h >> 27) ^ c) & 0xFFFFFFFF
    padded = x.value.ljust(x.value_size, b"\0")
    for (word,) in struct.iter_unpack("<I", padded):
        h = ((h << 16) ^ (h >> 16) ^ word) & 0xFFFFFFFF
    return h


def _pack(area: bytearray, first: int, attrs: Sequence[Xattr], base: int) -> list[int]:
    """Entries from ``first``, values from the end of ``area`` down; value offsets are
    relative to ``base``. Returns each entry's hash."""
    pos, end, hashes = first, len(area), []
    for x in attrs:
        offs = 0
        if x.value:
            end -= x.value_size
            area[end:end + len(x.value)] = x.value
            offs = end - base
        h = entry_hash(x)
        hashes.append(h)
        _ENTRY.pack_into(area, pos, len(x.name), x.index, offs, 0, len(x.value), h)
        area[pos + _ENTRY.size:pos + _ENTRY.size + len(x.name)] = x.name
        pos += x.entry_size
    return hashes


def lay_out_xattrs(path: str, xattrs: Sequence[tuple[str, bytes]], *,
                   inode_room: int) -> XattrLayout:
    """Split ``xattrs`` between the inode's ``inode_room`` spare bytes and one block."""
    if not xattrs:
        return XattrLayout(b"", ())
    attrs = sorted((_disk_form(path, n, v) for n, v in xattrs),
                   key=lambda x: (x.index, len(x.name), x.name))
    block_room = BLOCK_SIZE - _BLOCK_HEADER - _END_MARK
    inside: list[Xattr] = []
    outside: list[Xattr] = []
    used = 4 + _END_MARK                                   # magic, end mark
    for x in attrs:
        need = x.entry_size + x.value_size
        if need > block_room:
            raise XattrTooLarge(path, f"its value is {len(x.value)} bytes; one ext4 block "
                                      f"holds at most {block_room - x.entry_size}",
                                attribute=_full_name(x))
        if used + need <= inode_room:
            inside.append(x)
            used += need
        else:
            outside.append(x)
    if sum(x.entry_size + x.value_size for x in outside) > block_room:
        raise XattrTooLarge(path, f"its {len(attrs)} extended attributes need more than the "
                                  f"inode's {inode_room} spare bytes and one "
                                  f"{BLOCK_SIZE}-byte block; drop some from the image")
    body = b""
    if inside:
        area = bytearray(inode_room)
        struct.pack_into("<I", area, 0, MAGIC)
        _pack(area, 4, inside, base=4)
        body = bytes(area)
    return XattrLayout(body, tuple(outside))


def encode_block(attrs: Sequence[Xattr], block: int, seed: int | None) -> bytes:
    """The external xattr block at ``block``: header, entries, values, hash, crc32c."""
    area = bytearray(BLOCK_SIZE)
    hashes = _pack(area, _BLOCK_HEADER, attrs, base=0)
    block_hash = 0
    for h in hashes:
        block_hash = ((block_hash << 16) ^ (block_hash >> 16) ^ h) & 0xFFFFFFFF
    # h_magic, h_refcount, h_blocks, h_hash, h_checksum
    struct.pack_into("<IIIII", area, 0, MAGIC, 1, 1, block_hash, 0)
    if seed is not None:
        crc = ext4_crc(ext4_crc(seed, struct.pack("<Q", block)), area)
        struct.pack_into("<I", area, 16, crc)
    return bytes(area)


def _full_name(x: Xattr) -> str:
    prefix = next(p for p, i in _PREFIXES if i == x.index)
    return prefix + os.fsdecode(x.name)
