"""What deriving image C from the base image of P must change: a pure diff of two flat images.

Inputs are P's and C's entries (flat images: parents first, children in byte
order), the proven inode map of P's base image, both staging trees, and the
inode geometry of the grown copy. ``diff_trees`` pairs C's inodes with P's:

- A C inode *keeps* a P inode when they share a name and are the same kind
  of thing: both directories, both fifos, devices of one kind (the numbers
  are metadata), symlinks with one target, or regular files with the same
  content. Content is the same when both staging names are one host inode
  (both staging trees hard-link the same immutable layer-store file) or,
  failing that, when the bytes compare equal: the verdict depends on the
  content alone, never on whether staging linked or had to copy (another
  filesystem, protected_hardlinks), so the derived bytes do not either.
  Owners, modes, times, xattrs, device numbers and link counts are metadata
  the fixup pass writes afterwards from C's entries, whatever they were.
- A name of C kept by the same inode at the same path stays as it is. Any
  other name of P is unlinked from its directory (or vanishes with a
  directory that goes), any P inode no C inode keeps is freed, and every
  other name of C is created: a new inode for the first name of a C inode
  nobody keeps, a hard link for the rest.
- New inode numbers are predicted the way libext2fs's ``ext2fs_new_inode``
  hands them out (the first free inode at or after the start of the parent
  directory's block group, wrapping to the first non-reserved one; freed
  inodes count as free), so the listing that proves the result can be
  written before anything runs. A wrong prediction makes the check fail,
  never a wrong image.

Refuses (``DeriveRefused``, a deterministic "build it in full") whatever it
cannot derive exactly: a ``lost+found`` declared by one image and not the
other, or declared as something other than a directory; a staging tree that
disagrees with its entries (the full build then says where).
"""

from __future__ import annotations

import bisect
import filecmp
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.ext4.inodes import LOST_FOUND, InodeMap
from pipeline.flat.image import ROOTFS_NAME, FileType, FlatEntry

__all__ = ["DeriveRefused", "Creation", "TreeDiff", "InodeAllocator", "diff_trees"]


class DeriveRefused(Exception):
    """The image cannot be derived exactly from its base; build it in full.

    Not a user error: a deterministic decision about how to build, whose
    message says why for the log.
    """


@dataclass(frozen=True, slots=True)
class Creation:
    """One name of C the derive creates, in C's order (parents first)."""

    entry: FlatEntry
    link_to: int | str | None = None
    """None: a new inode from ``entry``; an int: a hard link to that kept base inode;
    a str: a hard link to the inode created earlier for that path of C."""


@dataclass(frozen=True, slots=True)
class TreeDiff:
    """Everything the apply script does, and the inode map it must leave behind."""

    unlinks: tuple[tuple[int, str], ...]
    """(directory inode, P path): names removed from directories C keeps."""
    frees: tuple[int, ...]
    """Base inodes no C inode keeps, in reverse P order."""
    creations: tuple[Creation, ...]
    inodes: InodeMap
    """C's inode map: kept inodes from the base, new ones as predicted."""
    changed: tuple[str, ...]
    """C directories whose entries change (new ones included), in C order."""
    kept: frozenset[str]
    """C paths kept exactly as the base has them (same name, same inode)."""


class InodeAllocator:
    """``ext2fs_new_inode`` over the inode bitmap the apply script will see.

    ``used`` are the base's allocated inodes; ``free`` releases them.
    Everything at or above ``high`` is free, so the bitmap is a sorted list
    of the free inodes below it.
    """

    FIRST_INO = 11                          # s_first_ino: inodes below it are reserved

    def __init__(self, used: set[int], *, per_group: int, count: int) -> None:
        self.per_group = per_group
        self.count = count
        self.high = max(used) + 1
        self.free_below = [n for n in range(self.FIRST_INO, self.high) if n not in used]

    def release(self, number: int) -> None:
        if number < self.high:
            bisect.insort(self.free_below, number)

    def allocate(self, parent: int) -> int:
        """The inode a new file, directory, symlink or node in directory ``parent`` gets."""
        start = max(((parent - 1) // self.per_group) * self.per_group + 1, self.FIRST_INO)
        for low, high in ((start, self.count), (self.FIRST_INO, start - 1)):
            index = bisect.bisect_left(self.free_below, low)
            if index < len(self.free_below) and self.free_below[index] <= high:
                return self.free_below.pop(index)
            first = max(low, self.high)
            if first <= high:
                self.free_below.extend(range(self.high, first))    # skipped: still free
                self.high = first + 1
                return first
        raise DeriveRefused(f"the grown image has no free inode left ({self.count} in all)")


def _staging_prefix(flat: Path) -> str:
    # Plain strings, not Path objects: the diff joins one name per regular file of
    # both trees, and pathlib's joins were most of its time (7,000 files: 0.2 s).
    return os.path.join(os.fspath(flat), ROOTFS_NAME, "")


def same_content(p_file: str, c_file: str, size: int) -> bool:
    """Whether two staged regular files of ``size`` bytes hold the same bytes."""
    try:
        p_stat, c_stat = os.lstat(p_file), os.lstat(c_file)
    except OSError as err:
        raise DeriveRefused(f"a staged file is missing ({err})") from err
    if (p_stat.st_dev, p_stat.st_ino) == (c_stat.st_dev, c_stat.st_ino):
        return True
    if p_stat.st_size != size or c_stat.st_size != size:
        return False        # the staging tree disagrees with its entry: rebuild in full
    return size == 0 or filecmp.cmp(p_file, c_file, shallow=False)


class _Pairing:
    """Which P inode each C inode keeps, decided in C order."""

    def __init__(self, p_entries: Mapping[str, FlatEntry], base: InodeMap, flat_p: Path,
                 flat_c: Path) -> None:
        self.p_entries = p_entries
        self.base = base
        self.p_prefix = _staging_prefix(flat_p)
        self.c_prefix = _staging_prefix(flat_c)
        self.claimed: set[int] = set()

    def compatible(self, old: FlatEntry, new: FlatEntry) -> bool:
        if old.type is not new.type:
            return False
        if new.type is FileType.SYMLINK:
            return old.target == new.target
        if new.type is FileType.REGULAR:
            return old.size == new.size and same_content(
                self.p_prefix + old.path, self.c_prefix + new.path, new.size)
        return True

    def keep(self, names: Sequence[FlatEntry]) -> int | None:
        """The P inode the C inode with these names keeps, if any."""
        for entry in names:
            old = self.p_entries.get(entry.path)
            if old is None:
                continue
            number = self.base[entry.path]
            if number not in self.claimed and self.compatible(old, entry):
                self.claimed.add(number)
                return number
        return None


def _check_lost_found(p_entries: Mapping[str, FlatEntry],
                      c_entries: Mapping[str, FlatEntry]) -> None:
    p, c = p_entries.get(LOST_FOUND), c_entries.get(LOST_FOUND)
    if (p is None) != (c is None) or any(e is not None and e.type is not FileType.DIRECTORY
                                         for e in (p, c)):
        raise DeriveRefused("the base and the image disagree about /lost+found, which "
                            "mke2fs makes itself")


def diff_trees(p_list: Sequence[FlatEntry], base: InodeMap, c_list: Sequence[FlatEntry], *,
               flat_p: Path, flat_c: Path, allocator: InodeAllocator) -> TreeDiff:
    """The diff from P (base image ``base``) to C; see the module docstring."""
    p_entries = {e.path: e for e in p_list}
    c_entries = {e.path: e for e in c_list}
    _check_lost_found(p_entries, c_entries)
    # C's inodes in order of their first name; a hard-link group is one inode.
    groups: dict[object, list[FlatEntry]] = {}
    for entry in c_list:
        key = ("g", entry.link_group) if entry.link_group is not None else entry.path
        groups.setdefault(key, []).append(entry)
    pairing = _Pairing(p_entries, base, flat_p, flat_c)
    keeps: dict[str, int] = {}               # C path -> kept P inode
    for names in groups.values():
        number = pairing.keep(names)
        if number is not None:
            for entry in names:
                keeps[entry.path] = number
    kept = frozenset(path for path, number in keeps.items()
                     if path in p_entries and base[path] == number)
    if "" not in kept:
        raise AssertionError("internal error: the root directory was not kept")

    changed: dict[str, None] = {}
    unlinks: list[tuple[int, str]] = []
    for entry in reversed(p_list):
        if entry.path and entry.path not in kept:
            parent = entry.path.rpartition("/")[0]
            if parent in kept:               # else its directory goes as a whole
                unlinks.append((base[parent], entry.path))
                changed[parent] = None
    frees = tuple(dict.fromkeys(base[e.path] for e in reversed(p_list)
                                if base[e.path] not in pairing.claimed))
    for number in frees:
        allocator.release(number)

    # Which names are created, and how, decided per C inode...
    plan: dict[str, int | str | None] = {}
    for names in groups.values():
        first: str | None = None
        for entry in names:
            if entry.path in kept:
                continue
            if entry.path in keeps:
                plan[entry.path] = keeps[entry.path]
            elif first is not None:
                plan[entry.path] = first
            else:
                plan[entry.path] = None      # a new inode; the group's other names link to it
                first = entry.path
    # ... then made in C's order, parents first, which is also the order debugfs
    # hands out the new inode numbers in.
    inodes: InodeMap = {path: base[path] for path in kept}
    creations: list[Creation] = []
    for entry in c_list:
        if entry.path not in plan:
            continue
        link_to = plan[entry.path]
        parent = entry.path.rpartition("/")[0]
        changed[parent] = None
        creations.append(Creation(entry, link_to=link_to))
        if link_to is None:
            inodes[entry.path] = allocator.allocate(inodes[parent])
            if entry.type is FileType.DIRECTORY:
                changed[entry.path] = None
        else:
            inodes[entry.path] = link_to if isinstance(link_to, int) else inodes[link_to]
    order = {e.path: i for i, e in enumerate(c_list)}
    return TreeDiff(unlinks=tuple(unlinks), frees=frees, creations=tuple(creations),
                    inodes=inodes, changed=tuple(sorted(changed, key=order.__getitem__)),
                    kept=kept)
