"""From flat entries to numbered inodes: the tree the writer lays out, checked.

Inode 2 is the root, 11 is lost+found (the image's own when it declares a
root ``lost+found`` directory, else one made like mke2fs's: root-owned 0700,
four blocks), and every other inode is numbered from 12 in the order of the
entries; a further name of a hard-link group shares its first name's inode.
Each directory's children are kept in byte order of their names.

Refuses (``pipeline.ext4.native.errors``): a first entry that is not the
root directory, a path twice, an entry whose parent is not a directory
before it, names that are empty, ``.``, ``..``, hold a NUL or exceed 255
bytes, symlink targets that are empty, hold a NUL or exceed 4095 bytes,
device entries without numbers, hard links of anything but regular files,
and directories with more subdirectories than ext4 counts without dir_nlink.
"""

from __future__ import annotations

import os
import stat
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.ext4.native.directory import Dirent
from pipeline.ext4.native.errors import BadTree, NameTooLong, SymlinkTooLong
from pipeline.ext4.native.inode import InodeRecord, time_range_ns
from pipeline.ext4.native.inputs import FileType, FlatEntry

__all__ = ["Node", "Tree", "number_tree", "ROOT_INO", "LOST_FOUND_INO", "FIRST_FREE_INO",
           "TYPE_BITS", "DIRENT_TYPES"]

ROOT_INO = 2
LOST_FOUND_INO = 11
FIRST_FREE_INO = 12
NAME_MAX = 255
SYMLINK_MAX = 4095                          # PATH_MAX less its NUL
LINK_MAX = 65000                            # EXT4_LINK_MAX; beyond it dir_nlink counts 1
LOST_FOUND_MODE = 0o700
TYPE_BITS = {FileType.REGULAR: stat.S_IFREG, FileType.DIRECTORY: stat.S_IFDIR,
             FileType.SYMLINK: stat.S_IFLNK, FileType.CHAR: stat.S_IFCHR,
             FileType.BLOCK: stat.S_IFBLK, FileType.FIFO: stat.S_IFIFO}
_FT_REG = 1
_NOT_NAMES = (b"", b".", b"..")
DIRENT_TYPES = {FileType.REGULAR: _FT_REG, FileType.DIRECTORY: 2, FileType.CHAR: 3,
                FileType.BLOCK: 4, FileType.FIFO: 5, FileType.SYMLINK: 7}


@dataclass(slots=True)
class Node:
    """One inode of the tree and what the writer needs to lay it out."""

    rec: InodeRecord
    type: FileType
    path: str
    entry: FlatEntry | None
    """None for the lost+found the writer makes itself."""
    parent: int = ROOT_INO
    children: list[Dirent] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tree:
    nodes: tuple[Node, ...]
    """In inode number order: the root, lost+found, then the rest."""
    clamped: tuple[str, ...]
    """Paths whose time ext4 cannot hold, clamped to its range."""


def number_tree(entries: Sequence[FlatEntry], *, epoch_ns: int, large_inode: bool,
                dir_nlink: bool) -> Tree:
    if not entries or entries[0].path != "" or entries[0].type is not FileType.DIRECTORY:
        raise BadTree("", "the first entry must be the root directory (path \"\")")
    nodes: dict[str, Node] = {}
    by_number: dict[int, Node] = {}
    groups: dict[int, Node] = {}
    clamped: list[str] = []
    next_ino = FIRST_FREE_INO
    directory, regular = FileType.DIRECTORY, FileType.REGULAR
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    low_ns, high_ns = time_range_ns(large=large_inode)
    for entry in entries:
        path, kind = entry.path, entry.type
        parent_node = None
        name = b""
        if path:
            parent_path, _, base = path.rpartition("/")
            name = base.encode(encoding, errors)            # os.fsencode, without its checks
            if len(name) > NAME_MAX or name in _NOT_NAMES or b"\0" in name:
                _check_name(path, name)
            parent_node = nodes.get(parent_path)
            if parent_node is None or parent_node.type is not directory:
                raise BadTree(path, "its parent is not a directory listed before it")
        if path in nodes:
            raise BadTree(path, "the path appears twice in the entries")
        group = entry.link_group
        node = groups.get(group) if group is not None else None
        if node is not None:
            if kind is not regular or node.type is not regular:
                raise BadTree(path, "only regular files can be hard links")
            node.rec.links += 1
        else:
            if kind is not regular or entry.size < 0:
                _check_entry(entry)
            if not path:
                number = ROOT_INO
            elif path == "lost+found" and kind is directory:
                number = LOST_FOUND_INO
            else:
                number, next_ino = next_ino, next_ino + 1
            # Enum members hash in Python: regular files skip the table lookup.
            bits = stat.S_IFREG if kind is regular else TYPE_BITS[kind]
            rec = InodeRecord(number, bits | (entry.mode & 0o7777), entry.uid, entry.gid,
                              entry.mtime_ns, 2 if kind is directory else 1)
            if not low_ns <= entry.mtime_ns <= high_ns:
                clamped.append(path)
            node = Node(rec, kind, path, entry)
            by_number[number] = node
            if group is not None:
                groups[group] = node
        nodes[path] = node
        if parent_node is not None:
            parent_node.children.append(
                (name, node.rec.number, _FT_REG if kind is regular else DIRENT_TYPES[kind]))
            if kind is directory:
                node.parent = parent_node.rec.number
                parent_node.rec.links += 1
    root = by_number[ROOT_INO]
    if LOST_FOUND_INO not in by_number:
        if any(name == b"lost+found" for name, _, _ in root.children):
            raise BadTree("lost+found", "the root's lost+found must be a directory")
        rec = InodeRecord(number=LOST_FOUND_INO, mode=stat.S_IFDIR | LOST_FOUND_MODE, uid=0,
                          gid=0, time_ns=epoch_ns, links=2)
        by_number[LOST_FOUND_INO] = Node(rec, FileType.DIRECTORY, "lost+found", None)
        root.children.append((b"lost+found", LOST_FOUND_INO, DIRENT_TYPES[FileType.DIRECTORY]))
        root.rec.links += 1
    for node in by_number.values():
        if node.type is FileType.DIRECTORY:
            node.children.sort()
            if node.rec.links > LINK_MAX:
                if not dir_nlink:
                    raise BadTree(node.path, f"it holds {node.rec.links - 2} directories, "
                                             f"more than ext4 counts without dir_nlink")
                node.rec.links = 1
    return Tree(tuple(by_number[n] for n in sorted(by_number)), tuple(clamped))


def _check_name(path: str, name: bytes) -> None:
    if name in (b"", b".", b"..") or b"\0" in name:
        raise BadTree(path, f"the name {name!r} cannot be a directory entry")
    if len(name) > NAME_MAX:
        raise NameTooLong(path, f"the name is {len(name)} bytes, more than ext4's "
                                f"{NAME_MAX}; shorten it in the image")


def _check_entry(entry: FlatEntry) -> None:
    if entry.type is FileType.SYMLINK:
        target = os.fsencode(entry.target or "")
        if not target or b"\0" in target or len(target) > SYMLINK_MAX:
            nul = " with a NUL" if b"\0" in target else ""
            raise SymlinkTooLong(entry.path, f"the link target is {len(target)} bytes{nul}; "
                                             f"ext4 holds 1 to {SYMLINK_MAX} bytes without NUL")
    if entry.type in (FileType.CHAR, FileType.BLOCK) and entry.rdev is None:
        raise BadTree(entry.path, "a device entry has no device numbers")
    if entry.type is FileType.REGULAR and entry.size < 0:
        raise BadTree(entry.path, f"its size {entry.size} is negative")
