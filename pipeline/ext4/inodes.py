"""Which inode mkfs.ext4 -d gave each entry: predicted, then proven in one debugfs run.

mke2fs walks each directory in C-locale ``alphasort`` order (byte order),
depth first, a directory's subtree right after the directory itself; inodes
are handed out in that order from 12 up (libext2fs ``ext2fs_new_inode`` takes
the first free inode, and nothing is ever freed), a root ``lost+found``
directory reuses mke2fs's inode 11, and a further name of a staged hard link
takes no new inode. ``predict_inodes`` computes that map from the entries
alone; ``expected_listings`` derives from the map what ``ls -p`` of every
directory must print, and ``listing_error`` compares it with one debugfs run
over all of them. A wrong map would put a setuid bit on the wrong file, so
nothing is spot-checked: every name, inode number, type and size is.

``list_inodes`` is the slow, name-based way (one debugfs run per tree level);
it says where the staging tree and entries.jsonl disagree, and maps the
inodes when the prediction failed although they agree (a future e2fsprogs
numbering differently).

Trusts nothing from the staging tree but what it must agree on with
entries.jsonl: names, types, sizes and link structure.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from pipeline.errors import Ext4Error
from pipeline.ext4.debugfs import LsEntry, list_directories
from pipeline.ext4.disk import LOST_FOUND_INO, ROOT_INO
from pipeline.flat.image import FileType, FlatEntry

__all__ = ["InodeMap", "Prediction", "predict", "predict_inodes", "expected_listings",
           "listing_error", "list_inodes", "TYPE_BITS", "basename"]

LOST_FOUND = "lost+found"

TYPE_BITS = {
    FileType.REGULAR: stat.S_IFREG, FileType.DIRECTORY: stat.S_IFDIR,
    FileType.SYMLINK: stat.S_IFLNK, FileType.FIFO: stat.S_IFIFO,
    FileType.CHAR: stat.S_IFCHR, FileType.BLOCK: stat.S_IFBLK,
}
# Device nodes arrive as empty regular placeholder files.
_STAGED_BITS = {**TYPE_BITS, FileType.CHAR: stat.S_IFREG, FileType.BLOCK: stat.S_IFREG}
# ls -p prints the mode as "%06o": the first two digits are the file type.
_STAGED_TYPE = {t: b"%02o" % (bits >> 12) for t, bits in _STAGED_BITS.items()}
_DIR_TYPE = _STAGED_TYPE[FileType.DIRECTORY]


InodeMap = dict[str, int]
"""Inode number of every entry, by path (the root, "", is inode 2)."""

ListingKey = tuple[bytes, bytes, bytes, bytes]
"""(name, inode, file type digits, size) of one ``ls -p`` record, as printed."""


@dataclass(frozen=True, slots=True)
class Prediction:
    """A predicted inode map and the listings that prove it (``expected_listings``)."""

    inodes: InodeMap
    listings: dict[int, frozenset[ListingKey]]


def predict(entries: Sequence[FlatEntry]) -> Prediction:
    """``predict_inodes`` and the listings to check it by: pure, so it can run during mkfs."""
    inodes = predict_inodes(entries)
    return Prediction(inodes=inodes, listings=expected_listings(entries, inodes))


def predict_inodes(entries: Sequence[FlatEntry]) -> InodeMap:
    """The inode of every entry as mkfs.ext4 -d numbers them (see the module docstring).

    Pure: reads nothing but ``entries`` (root first, each parent before its children).
    """
    children: dict[str, list[tuple[bytes, FlatEntry]]] = defaultdict(list)
    for entry in entries[1:]:
        parent, _, base = entry.path.rpartition("/")
        children[parent].append((os.fsencode(base), entry))
    ino = {"": ROOT_INO}
    group_ino: dict[int, int] = {}
    next_ino = LOST_FOUND_INO + 1
    # Depth first with an explicit stack: trees may be deeper than Python's recursion limit.
    stack = [iter(sorted(children.pop("", ()), key=_name_order))]
    while stack:
        for name, entry in stack[-1]:
            if name == b"lost+found" and len(stack) == 1 and entry.type is FileType.DIRECTORY:
                number = LOST_FOUND_INO
            elif entry.link_group is not None and entry.link_group in group_ino:
                number = group_ino[entry.link_group]
            else:
                number = next_ino
                next_ino += 1
                if entry.link_group is not None:
                    group_ino[entry.link_group] = number
            ino[entry.path] = number
            if entry.type is FileType.DIRECTORY:
                stack.append(iter(sorted(children.pop(entry.path, ()), key=_name_order)))
                break
        else:
            stack.pop()
    return ino


_name_order = itemgetter(0)
"""alphasort in the C locale: strcmp, byte order of the names."""


def expected_listings(entries: Sequence[FlatEntry],
                      inodes: InodeMap) -> dict[int, frozenset[ListingKey]]:
    """Every record ``ls -p`` must print for each directory if ``inodes`` is right.

    Derived from the map alone, so checking them checks the very map the
    fixup script uses: ``.`` and ``..``, mke2fs's own lost+found unless the
    image declares one, and each entry's name, inode, staged type and size.
    Listings of every directory agreeing with these prove, from the root
    down, that each path reaches the inode the map gives it.
    """
    listings: dict[int, set[ListingKey]] = defaultdict(set)
    own_lost_found = True                   # mke2fs's, unless the image declares one
    for entry in entries:
        parent = entry.path.rpartition("/")[0]
        number = b"%d" % inodes[entry.path]
        if entry.type is FileType.DIRECTORY:
            records = listings[inodes[entry.path]]
            records.add((b".", number, _DIR_TYPE, b""))
            records.add((b"..", b"%d" % inodes[parent], _DIR_TYPE, b""))
        if entry.path == LOST_FOUND and entry.type is FileType.DIRECTORY:
            own_lost_found = False
        if entry.path:
            size = _staged_size(entry)
            listings[inodes[parent]].add((basename(entry.path), number, _STAGED_TYPE[entry.type],
                                          b"" if size is None else b"%d" % size))
    if own_lost_found:
        listings[ROOT_INO].add((b"lost+found", b"%d" % LOST_FOUND_INO, _DIR_TYPE, b""))
    return {number: frozenset(records) for number, records in listings.items()}


def listing_error(listings: Mapping[int, list[LsEntry]] | None,
                  expected: Mapping[int, frozenset[ListingKey]]) -> str | None:
    """None when ``listings`` (``ls -p`` of every directory in ``expected``) hold
    exactly the expected records; else what disagrees first."""
    if listings is None:
        return "debugfs refused to list a predicted directory"
    if listings.keys() != expected.keys():
        return "the listed directories are not the predicted ones"
    for number, want in expected.items():
        got = []
        for i, mode, _, _, name, size in listings[number]:
            if i != b"0":                   # an empty slot
                kind = mode[:2]
                # A directory's size is not compared (ls.c prints none for it).
                got.append((name, i, kind, b"" if kind == _DIR_TYPE else size))
        if len(got) != len(want) or want.difference(got):
            extra = sorted(set(got) - want)[:3]
            missing = sorted(want.difference(got))[:3]
            return f"directory <{number}> holds {extra} instead of {missing}"
    return None


def _staged_size(entry: FlatEntry) -> int | None:
    if entry.type is FileType.REGULAR:
        return entry.size
    if entry.type is FileType.SYMLINK:
        return len(os.fsencode(entry.target or ""))
    if entry.type in (FileType.CHAR, FileType.BLOCK, FileType.FIFO):
        return 0
    return None


def basename(path: str) -> bytes:
    return os.fsencode(path.rpartition("/")[2])


def _disagree(flat_dir: Path, what: str) -> Ext4Error:
    return Ext4Error(f"flat image {flat_dir}: the staging tree and entries.jsonl disagree: "
                     f"{what}; delete this flat image so that flatten rebuilds it")


def list_inodes(image: Path, entries: Sequence[FlatEntry], flat_dir: Path,
                scratch: Path) -> InodeMap:
    """Inode number of every entry by listing directories level by level, by name.

    The slow way, one debugfs run per tree level; it checks names, types,
    sizes and hard links, and raises Ext4Error saying where the staging tree
    and entries.jsonl disagree.
    """
    children: dict[str, list[FlatEntry]] = defaultdict(list)
    for entry in entries[1:]:
        children[entry.path.rpartition("/")[0]].append(entry)
    ino: InodeMap = {"": ROOT_INO}
    level = [""]
    while level:
        listings = list_directories(image, [ino[p] for p in level], scratch)
        next_level: list[str] = []
        for parent in level:
            found = {r.name: r for r in listings[ino[parent]]}
            declared = {basename(e.path): e for e in children.get(parent, ())}
            if parent == "" and LOST_FOUND.encode() not in declared:
                found.pop(LOST_FOUND.encode(), None)     # mke2fs's own, kept as made
            if found.keys() != declared.keys():
                extra = sorted(found.keys() - declared.keys())
                missing = sorted(declared.keys() - found.keys())
                raise _disagree(flat_dir, f"directory {parent or '/'!r} has undeclared "
                                          f"names {extra[:3]} and lacks {missing[:3]}")
            for name, entry in declared.items():
                record = found[name]
                if stat.S_IFMT(record.mode) != _STAGED_BITS[entry.type]:
                    raise _disagree(flat_dir, f"{entry.path!r} is declared "
                                              f"{entry.type.name.lower()} but staged with "
                                              f"mode {record.mode:o}")
                want_size = _staged_size(entry)
                if want_size is not None and record.size != want_size:
                    raise _disagree(flat_dir, f"{entry.path!r} is declared {want_size} bytes "
                                              f"but staged with {record.size}")
                ino[entry.path] = record.ino
                if entry.type is FileType.DIRECTORY:
                    next_level.append(entry.path)
        level = next_level
    _check_links(entries, ino, flat_dir)
    return ino


def _check_links(entries: Sequence[FlatEntry], ino: InodeMap, flat_dir: Path) -> None:
    group_ino: dict[int, int] = {}
    owner: dict[int, FlatEntry] = {}
    for entry in entries:
        number = ino[entry.path]
        first = owner.setdefault(number, entry)
        if entry.link_group is not None:
            if group_ino.setdefault(entry.link_group, number) != number:
                raise _disagree(flat_dir, f"{entry.path!r} is declared a hard link of "
                                          f"group {entry.link_group} but staged apart")
        if first is not entry and (first.link_group is None
                                   or first.link_group != entry.link_group):
            raise _disagree(flat_dir, f"{entry.path!r} and {first.path!r} share a staged "
                                      f"inode but are not declared hard links")
