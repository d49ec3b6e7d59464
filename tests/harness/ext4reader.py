"""A small pure-Python ext4 reader for checking what the builder wrote.

Independent of the builder on purpose: no pipeline code, no e2fsprogs, only
the on-disk format as documented in the kernel's ext4 data structures
(Documentation/filesystems/ext4/): superblock, 32/64-byte group
descriptors, inodes with extended timestamps, extent trees (index and leaf
nodes, uninitialized extents read as zeros, holes), linear and htree
directories (an htree's index blocks read as empty directory blocks), fast
and slow symlinks, device numbers in both encodings, and xattrs in the inode
body and in an external block, POSIX ACLs converted back to the xattr form.

It reads a whole image into a dict path -> Node with ``walk()``; names are
decoded with ``surrogateescape`` like ``os.fsdecode``.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Ext4Image", "Node"]

_S_IFMT = 0o170000
_TYPES = {0o040000: "d", 0o100000: "f", 0o120000: "l", 0o010000: "p", 0o020000: "c",
          0o060000: "b", 0o140000: "s"}
_EXTENTS_FL = 0x80000
_INLINE_DATA_FL = 0x10000000
_XATTR_MAGIC = 0xEA020000
_XATTR_PREFIX = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
                 4: "trusted.", 6: "security.", 7: "system."}
_ACL_USER, _ACL_GROUP = 0x02, 0x08


@dataclass
class Node:
    path: str
    ino: int
    type: str
    """f d l p c b s"""
    mode: int
    """Permission bits with setuid/setgid/sticky (mask 0o7777)."""
    uid: int
    gid: int
    size: int
    nlink: int
    mtime_ns: int
    atime_ns: int
    ctime_ns: int
    crtime_ns: int | None
    sha256: str | None = None
    target: str | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    dirent_type: int = 0
    flags: int = 0


class Ext4Image:
    """Read-only view of an ext4 image file."""

    def __init__(self, path: Path) -> None:
        self.f = open(path, "rb")
        sb = self._pread(1024, 1024)
        (self.inodes_count, blocks_lo, r_lo, free_lo, self.free_inodes, first_data,
         log_bs) = struct.unpack_from("<7I", sb, 0)
        self.block_size = 1024 << log_bs
        self.blocks_per_group, = struct.unpack_from("<I", sb, 0x20)
        self.inodes_per_group, = struct.unpack_from("<I", sb, 0x28)
        magic, = struct.unpack_from("<H", sb, 0x38)
        if magic != 0xEF53:
            raise ValueError(f"{path}: not ext2/3/4 (magic {magic:#x})")
        self.inode_size, = struct.unpack_from("<H", sb, 0x58)
        self.compat, self.incompat, self.ro_compat = struct.unpack_from("<3I", sb, 0x5C)
        self.uuid = sb[0x68:0x78]
        self.label = sb[0x78:0x88].rstrip(b"\0")
        self.hash_seed = sb[0xEC:0xFC]
        desc_size, = struct.unpack_from("<H", sb, 0xFE)
        self.is64 = bool(self.incompat & 0x80)
        hi = struct.unpack_from("<3I", sb, 0x150) if self.is64 else (0, 0, 0)
        self.blocks_count = blocks_lo | hi[0] << 32
        self.reserved_blocks = r_lo | hi[1] << 32
        self.free_blocks = free_lo | hi[2] << 32
        self.times = dict(zip(("mtime", "wtime"), struct.unpack_from("<2I", sb, 0x2C)))
        self.times["lastcheck"], = struct.unpack_from("<I", sb, 0x40)
        self.times["mkfs_time"], = struct.unpack_from("<I", sb, 0x108)
        self.desc_size = desc_size if self.is64 else 32
        self.gdt_offset = (first_data + 1) * self.block_size

    def close(self) -> None:
        self.f.close()

    def __enter__(self) -> Ext4Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pread(self, offset: int, size: int) -> bytes:
        return os.pread(self.f.fileno(), size, offset)

    def block(self, n: int) -> bytes:
        return self._pread(n * self.block_size, self.block_size)

    # -- inodes ---------------------------------------------------------

    def raw_inode(self, ino: int) -> bytes:
        group, index = divmod(ino - 1, self.inodes_per_group)
        desc = self._pread(self.gdt_offset + group * self.desc_size, self.desc_size)
        table = struct.unpack_from("<I", desc, 0x8)[0]
        if self.desc_size >= 64:
            table |= struct.unpack_from("<I", desc, 0x28)[0] << 32
        return self._pread(table * self.block_size + index * self.inode_size, self.inode_size)

    def _extents(self, node: bytes) -> list[tuple[int, int, int, bool]]:
        """(logical block, length, physical block, uninitialized) from an extent node."""
        magic, entries, _max, depth = struct.unpack_from("<4H", node, 0)
        if magic != 0xF30A:
            raise ValueError(f"bad extent header magic {magic:#x}")
        out = []
        for i in range(entries):
            off = 12 + 12 * i
            if depth == 0:
                lblk, length, start_hi, start_lo = struct.unpack_from("<IHHI", node, off)
                uninit = length > 32768
                out.append((lblk, length - 32768 if uninit else length,
                            start_hi << 32 | start_lo, uninit))
            else:
                _lblk, leaf_lo, leaf_hi = struct.unpack_from("<IIH", node, off)
                out += self._extents(self.block(leaf_hi << 32 | leaf_lo))
        return out

    def read_data(self, raw: bytes) -> bytes:
        size = struct.unpack_from("<I", raw, 0x4)[0] | struct.unpack_from("<I", raw, 0x6C)[0] << 32
        flags, = struct.unpack_from("<I", raw, 0x20)
        i_block = raw[0x28:0x28 + 60]
        if flags & _INLINE_DATA_FL:
            raise NotImplementedError("inline data")
        out = bytearray(size)
        bs = self.block_size
        if flags & _EXTENTS_FL:
            for lblk, length, pblk, uninit in self._extents(i_block):
                if uninit:
                    continue
                start = lblk * bs
                if start >= size:
                    continue
                data = self._pread(pblk * bs, min(length * bs, size - start))
                out[start:start + len(data)] = data
        else:
            blocks = struct.unpack("<15I", i_block)
            for i, pblk in enumerate(blocks[:12]):
                if pblk and i * bs < size:
                    data = self.block(pblk)[:size - i * bs]
                    out[i * bs:i * bs + len(data)] = data
            if size > 12 * bs:
                raise NotImplementedError("indirect blocks")
        return bytes(out)

    def _xattrs(self, raw: bytes) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        if self.inode_size > 128:
            extra, = struct.unpack_from("<H", raw, 0x80)
            body = 128 + extra
            if len(raw) >= body + 4 and struct.unpack_from("<I", raw, body)[0] == _XATTR_MAGIC:
                first = body + 4
                found.update(self._xattr_entries(raw, first, base=first))
        acl = struct.unpack_from("<I", raw, 0x68)[0] | struct.unpack_from("<H", raw, 0x76)[0] << 32
        if acl:
            block = self.block(acl)
            if struct.unpack_from("<I", block, 0)[0] != _XATTR_MAGIC:
                raise ValueError(f"bad xattr block {acl}")
            found.update(self._xattr_entries(block, 32, base=0))
        return found

    def _xattr_entries(self, buf: bytes, pos: int, *, base: int) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        while pos + 16 <= len(buf) and struct.unpack_from("<I", buf, pos)[0] != 0:
            name_len, index, value_offs, value_inum, value_size, _hash = \
                struct.unpack_from("<BBHIII", buf, pos)
            if value_inum:
                raise NotImplementedError("ea_inode values")
            name = buf[pos + 16:pos + 16 + name_len]
            value = buf[base + value_offs:base + value_offs + value_size]
            full = _XATTR_PREFIX.get(index, "") + os.fsdecode(name)
            if index in (2, 3):
                value = _acl_to_xattr(value)
            out[full] = value
            pos += (16 + name_len + 3) & ~3
        return out

    def stat(self, ino: int, path: str = "") -> Node:
        raw = self.raw_inode(ino)
        mode, uid_lo, size_lo, atime, ctime, mtime, _dtime, gid_lo, nlink = \
            struct.unpack_from("<HHIIIIIHH", raw, 0)
        flags, = struct.unpack_from("<I", raw, 0x20)
        size = size_lo | struct.unpack_from("<I", raw, 0x6C)[0] << 32
        uid_hi, gid_hi = struct.unpack_from("<HH", raw, 0x78)
        kind = _TYPES[mode & _S_IFMT]
        large = self.inode_size > 128 and struct.unpack_from("<H", raw, 0x80)[0] >= 24

        def ts(seconds: int, extra_off: int | None) -> int:
            secs = seconds - 2**32 if seconds >= 2**31 else seconds
            if not large or extra_off is None:
                return secs * 10**9
            extra, = struct.unpack_from("<I", raw, extra_off)
            return (secs + ((extra & 3) << 32)) * 10**9 + (extra >> 2)

        crtime = None
        if large:
            crtime = ts(struct.unpack_from("<I", raw, 0x90)[0], 0x94)
        node = Node(path=path, ino=ino, type=kind, mode=mode & 0o7777,
                    uid=uid_lo | uid_hi << 16, gid=gid_lo | gid_hi << 16, size=size,
                    nlink=nlink, mtime_ns=ts(mtime, 0x88), atime_ns=ts(atime, 0x8C),
                    ctime_ns=ts(ctime, 0x84), crtime_ns=crtime, xattrs=self._xattrs(raw),
                    flags=flags)
        if kind == "f":
            node.sha256 = hashlib.sha256(self.read_data(raw)).hexdigest()
        elif kind == "l":
            if size < 60 and not flags & _EXTENTS_FL:
                node.target = os.fsdecode(raw[0x28:0x28 + size])
            else:
                node.target = os.fsdecode(self.read_data(raw))
        elif kind in "cb":
            b0, b1 = struct.unpack_from("<II", raw, 0x28)
            if b0:
                node.rdev = ((b0 >> 8) & 0xFF, b0 & 0xFF)
            else:
                node.rdev = ((b1 & 0xFFF00) >> 8, (b1 & 0xFF) | ((b1 >> 12) & 0xFFF00))
        return node

    # -- directories ----------------------------------------------------

    def listdir(self, ino: int) -> list[tuple[bytes, int, int]]:
        """(name, inode, dirent file type) of each live entry, "." and ".." excluded."""
        data = self.read_data(self.raw_inode(ino))
        out = []
        for start in range(0, len(data), self.block_size):
            pos, end = start, start + self.block_size
            while pos + 8 <= end:
                child, rec_len, name_len, ftype = struct.unpack_from("<IHBB", data, pos)
                if rec_len < 8:
                    raise ValueError(f"directory {ino}: bad rec_len {rec_len} at {pos}")
                name = data[pos + 8:pos + 8 + name_len]
                if child and name not in (b".", b".."):
                    out.append((name, child, ftype))
                pos += rec_len
        return out

    def walk(self) -> dict[str, Node]:
        """Every path below the root (root is ""), with lost+found included."""
        nodes = {"": self.stat(2, "")}
        stack = [("", 2)]
        while stack:
            path, ino = stack.pop()
            for name, child, ftype in self.listdir(ino):
                sub = f"{path}/{os.fsdecode(name)}" if path else os.fsdecode(name)
                node = self.stat(child, sub)
                node.dirent_type = ftype
                nodes[sub] = node
                if node.type == "d":
                    stack.append((sub, child))
        return nodes


def _acl_to_xattr(disk: bytes) -> bytes:
    """ext4's on-disk POSIX ACL (version 1, short entries) to the xattr form (version 2)."""
    version, = struct.unpack_from("<I", disk, 0)
    if version != 1:
        raise ValueError(f"bad ext4 ACL version {version}")
    out = [struct.pack("<I", 2)]
    pos = 4
    while pos < len(disk):
        tag, perm = struct.unpack_from("<HH", disk, pos)
        if tag in (_ACL_USER, _ACL_GROUP):
            ident, = struct.unpack_from("<I", disk, pos + 4)
            pos += 8
        else:
            ident = 0xFFFFFFFF
            pos += 4
        out.append(struct.pack("<HHI", tag, perm, ident))
    return b"".join(out)
