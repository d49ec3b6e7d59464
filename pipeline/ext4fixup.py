"""After mkfs.ext4 -d: find every entry's inode, then write the debugfs fixups.

mkfs.ext4 -d copies what ``lstat`` says about the staging tree, which an
unprivileged builder could not make true: owners, setuid bits, device
nodes, capabilities. This module

1. predicts each entry's inode from the documented ``-d`` numbering
   (``predict_inodes``): mke2fs walks each directory in C-locale
   ``alphasort`` order (byte order), depth first, a directory's subtree
   right after the directory itself; inodes are handed out in that order
   from 12 up (libext2fs ``ext2fs_new_inode`` takes the first free inode,
   and nothing is ever freed), a root ``lost+found`` directory reuses
   mke2fs's inode 11, and a further name of a staged hard link takes no
   new inode;
2. checks the map completely in one debugfs run: ``ls -p`` of every
   directory the map names must hold exactly the names, inode numbers,
   types and sizes the map implies, ``.`` and ``..`` included
   (``expected_listings``, ``listing_error``). A wrong map would put a
   setuid bit on the wrong file, so nothing is spot-checked. When the check
   fails, the directories are listed level by level by name (``list_inodes``,
   the slow way), which says where the staging tree and ``entries.jsonl``
   disagree; if they agree, that listing is the map (as safe as before: it
   is the name-based mapping this module always had) and a warning says the
   prediction failed, e.g. a new e2fsprogs numbering differently;
3. reads back, straight from the image's inode tables, what mkfs wrote into
   the fields the fixup sets (``read_inodes``), and writes one debugfs
   script that changes only what differs from what the entries declare
   (``fixup_script``). Skipping a write of a value already there gives the
   same bytes, so root and unprivileged builders still agree byte for byte.

What the script sets, by inode number:

- uid, gid and the full mode, setuid, setgid and sticky bits included;
- atime, ctime, mtime and crtime from the entry's mtime, nanoseconds and
  epoch bits in the ``*_extra`` fields (ext4 inode layout, "Inode
  Timestamps"), so host times never leak into the image; seconds are
  written as ``<field>_lo`` (debugfs ``parse_uint`` on the low word) because
  the plain time setter also rewrites the epoch bits of ``*_extra``;
- xattrs exactly as declared: xattrs mkfs copied from the host are removed,
  declared ones are set from files (binary values such as security.capability);
- device nodes, from their empty placeholder files: the inode becomes a
  character or block device (no EXTENTS flag, i_block[0..14] cleared, the
  device number in i_block[0] in the old 8:8 encoding when it fits, else in
  i_block[1] in the new one, as Linux's ext4_do_update_inode writes it), and
  the directory entry is relinked so its file type byte matches.

Nothing from the staging tree is trusted for metadata; it only has to agree
with ``entries.jsonl`` on names, types and link structure.
"""

from __future__ import annotations

import itertools
import os
import stat
import struct
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import NamedTuple

import structlog

from .debugfs import DirectoryListing, LsEntry, Script, list_directories, quote, xattr_value_files
from .errors import Ext4Error
from .ext4size import FIRST_INO, xattr_disk_name
from .flatimage import FileType, FlatEntry

__all__ = ["InodeMap", "InodeFields", "Prediction", "predict", "predict_inodes",
           "expected_listings", "listing_error", "list_inodes", "read_inodes", "fixup_script",
           "plan_fixups", "time_fields", "ROOT_INO"]

log = structlog.get_logger(__name__)

ROOT_INO = 2
LOST_FOUND = "lost+found"
LOST_FOUND_INO = FIRST_INO                 # mke2fs makes lost+found first, as inode 11

_TYPE_BITS = {
    FileType.REGULAR: stat.S_IFREG, FileType.DIRECTORY: stat.S_IFDIR,
    FileType.SYMLINK: stat.S_IFLNK, FileType.FIFO: stat.S_IFIFO,
    FileType.CHAR: stat.S_IFCHR, FileType.BLOCK: stat.S_IFBLK,
}
# Device nodes arrive as empty regular placeholder files.
_STAGED_BITS = {**_TYPE_BITS, FileType.CHAR: stat.S_IFREG, FileType.BLOCK: stat.S_IFREG}
# ls -p prints the mode as "%06o": the first two digits are the file type.
_STAGED_TYPE = {t: b"%02o" % (bits >> 12) for t, bits in _STAGED_BITS.items()}
_DIR_TYPE = _STAGED_TYPE[FileType.DIRECTORY]
_DEVICES = (FileType.CHAR, FileType.BLOCK)

# Time range ext4's 34-bit seconds can hold that e2fsck does not flag: from
# 1901 up to 2310-04-04, where e2fsck starts reading epoch bits 3 with the
# sign bit set as a pre-1970 time (pass1.c, check_inode_extra_negative_epoch).
_MIN_TIME = -(2**31)
_MAX_TIME_LARGE = 3 * 2**32 - 2**31 - 1
_MAX_TIME_SMALL = 2**31 - 1                # 128-byte inodes: 32-bit seconds only
_I_BLOCK_FIELDS = [f"block[{i}]" for i in range(12)] + ["block[IND]", "block[DIND]",
                                                         "block[TIND]"]
_TIME_FIELDS = (("atime_lo", "atime_extra"), ("ctime_lo", "ctime_extra"),
                ("mtime_lo", "mtime_extra"), ("crtime_lo", "crtime_extra"))

# The on-disk inode (ext4 disk layout, "Index Nodes"): i_mode, i_uid, i_atime,
# i_ctime, i_mtime, i_gid, i_file_acl_lo, l_i_file_acl_high, l_i_uid_high,
# l_i_gid_high; then, in large inodes, i_extra_isize, i_ctime_extra,
# i_mtime_extra, i_atime_extra, i_crtime, i_crtime_extra.
_SMALL_INODE = struct.Struct("<HH4xIII4xH78xI10xHHH4x")
_LARGE_INODE = struct.Struct("<HH4xIII4xH78xI10xHHH4xH2xIIIII")
# Offset of each *_extra / crtime field past byte 128; present if i_extra_isize covers it.
_EXTRA_END = {"ctime_extra": 8, "mtime_extra": 12, "atime_extra": 16, "crtime": 20,
              "crtime_extra": 24}
_FULL_EXTRA = max(_EXTRA_END.values())
_U32 = struct.Struct("<I")
_XATTR_MAGIC = 0xEA020000
_XATTR_ENTRY = struct.Struct("<BBHIII")
_XATTR_BLOCK_HEADER = 32
_XATTR_PREFIXES = {1: "user.", 2: "system.posix_acl_access", 3: "system.posix_acl_default",
                   4: "trusted.", 6: "security.", 7: "system.", 8: "system.richacl"}


def time_fields(mtime_ns: int, *, large_inode: bool) -> tuple[int, int | None]:
    """(low 32 bits of seconds, ``*_extra`` value or None) for one timestamp.

    Times outside what the inode can hold are clamped to its range.
    """
    seconds, nanos = divmod(mtime_ns, 10**9)
    high = _MAX_TIME_LARGE if large_inode else _MAX_TIME_SMALL
    if not _MIN_TIME <= seconds <= high:
        seconds, nanos = min(max(seconds, _MIN_TIME), high), 0
    low = seconds & 0xFFFFFFFF
    if not large_inode:
        return low, None
    signed_low = low - 2**32 if low >= 2**31 else low
    epoch = (seconds - signed_low) >> 32
    return low, (nanos << 2) | epoch


# -- which inode each entry got ---------------------------------------------------------

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
        if entry.path:
            size = _staged_size(entry)
            listings[inodes[parent]].add((_basename(entry.path), number,
                                          _STAGED_TYPE[entry.type],
                                          b"" if size is None else b"%d" % size))
            if entry.path == LOST_FOUND and entry.type is FileType.DIRECTORY:
                own_lost_found = False
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


def _basename(path: str) -> bytes:
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
            declared = {_basename(e.path): e for e in children.get(parent, ())}
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


# -- what mkfs wrote --------------------------------------------------------------------


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
        (mode, uid, atime, ctime, mtime, gid, acl_lo, acl_hi, uid_hi,
         gid_hi) = _SMALL_INODE.unpack_from(raw, offset)
        seconds: tuple[int, ...] = (atime, ctime, mtime)
        extras: tuple[int | None, ...] = (None, None, None)
    else:
        (mode, uid, atime, ctime, mtime, gid, acl_lo, acl_hi, uid_hi, gid_hi, isize,
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
                _U32.unpack_from(raw, start)[0] == _XATTR_MAGIC:
            names = _xattr_names(raw, start + 4, offset + inode_size)
    acl = acl_lo | acl_hi << 32
    if acl:
        data = _pread(fd, block, acl * block)
        if _U32.unpack_from(data, 0)[0] == _XATTR_MAGIC:
            names += _xattr_names(data, _XATTR_BLOCK_HEADER, block)
    return InodeFields(mode, uid | uid_hi << 16, gid | gid_hi << 16, seconds, extras,
                       tuple(sorted(set(names))) if names else ())


def _xattr_names(data: bytes, pos: int, end: int) -> list[str]:
    """Names of the xattr entries from ``pos`` (ext4 disk layout, "Extended Attributes")."""
    names = []
    while pos + _XATTR_ENTRY.size <= end and _U32.unpack_from(data, pos)[0] != 0:
        name_len, index = data[pos], data[pos + 1]
        prefix = _XATTR_PREFIXES.get(index)
        if prefix is None:
            raise AssertionError(f"internal error: mkfs.ext4 stored an extended attribute "
                                 f"with name index {index}, which this builder cannot name")
        suffix = data[pos + _XATTR_ENTRY.size:pos + _XATTR_ENTRY.size + name_len]
        names.append(prefix + os.fsdecode(suffix))
        pos += (_XATTR_ENTRY.size + name_len + 3) & ~3
    return names


# -- the fixup script -------------------------------------------------------------------


def fixup_script(entries: Sequence[FlatEntry], inodes: InodeMap,
                 current: Mapping[int, InodeFields], *, scratch: Path,
                 large_inode: bool) -> Script:
    """The one debugfs script that makes every inode what its entry declares,
    writing only the fields whose ``current`` value differs."""
    script = Script()
    sif = script.sif
    values = xattr_value_files((v for e in entries for _, v in e.xattrs), scratch)
    fields = _TIME_FIELDS if large_inode else _TIME_FIELDS[:3]
    times: dict[int, tuple[int, int | None]] = {}
    relinks: list[FlatEntry] = []
    done: set[int] = set()
    for entry in entries:
        number = inodes[entry.path]
        if entry.type in _DEVICES:
            relinks.append(entry)
        if number in done:
            continue                        # a further name of a hard-linked inode
        done.add(number)
        now = current[number]
        mode = _TYPE_BITS[entry.type] | (entry.mode & 0o7777)
        if entry.type in _DEVICES:
            _make_device(script, number, entry)
        if now.uid != entry.uid:
            sif(number, "uid", entry.uid)
        if now.gid != entry.gid:
            sif(number, "gid", entry.gid)
        if now.mode != mode:
            sif(number, "mode", mode)
        stamp = times.get(entry.mtime_ns)
        if stamp is None:
            stamp = times[entry.mtime_ns] = time_fields(entry.mtime_ns,
                                                        large_inode=large_inode)
        low, extra = stamp
        for (seconds_field, extra_field), seconds, extra_now in zip(fields, now.seconds,
                                                                    now.extras):
            if seconds != low:
                sif(number, seconds_field, low)
            if extra != extra_now and extra is not None:
                sif(number, extra_field, extra)
        if now.xattrs or entry.xattrs:
            _xattrs(script, number, entry, now.xattrs, values)
    # Relink device entries last, so the directory entry's file type byte is
    # taken from the finished inode (debugfs "link" uses ext2_file_type(mode)).
    for entry in relinks:
        quoted = quote(_basename(entry.path), what="device node name")
        script.command("cd", f"<{inodes[entry.path.rpartition('/')[0]]}>")
        script.command("unlink", quoted)
        script.command("link", f"<{inodes[entry.path]}>", quoted)
    return script


def _xattrs(script: Script, number: int, entry: FlatEntry, present: tuple[str, ...],
            values: Mapping[bytes, Path]) -> None:
    ref = f"<{number}>"
    declared = {name for name, _ in entry.xattrs}
    for name in present:
        if name not in declared:            # copied from the host by mkfs
            script.command("ea_rm", ref, quote(os.fsencode(name), what="host xattr"))
    for name, value in entry.xattrs:
        if xattr_disk_name(name) is None:
            raise Ext4Error(f"{entry.path or '/'!r}: extended attribute {name!r} cannot "
                            f"be stored in ext4 (expected a user., trusted., security. "
                            f"or system.posix_acl_* name); drop it from the image")
        script.command("ea_set", "-f", quote(os.fsencode(str(values[value])), what="path"),
                       ref, quote(os.fsencode(name), what=f"xattr of {entry.path!r}"))


def _make_device(script: Script, number: int, entry: FlatEntry) -> None:
    if entry.rdev is None:
        raise Ext4Error(f"{entry.path!r}: a {entry.type.name.lower()} device entry has no "
                        f"device numbers; the flat image is corrupt, delete it")
    major, minor = entry.rdev
    if not (0 <= major < 2**12 and 0 <= minor < 2**20):
        raise Ext4Error(f"{entry.path!r}: device number {major}:{minor} does not fit Linux's "
                        f"12-bit major, 20-bit minor encoding")
    script.sif(number, "flags", 0)
    for field in _I_BLOCK_FIELDS:
        script.sif(number, field, 0)
    if major < 256 and minor < 256:
        script.sif(number, "block[0]", (major << 8) | minor)
    else:
        script.sif(number, "block[1]", (minor & 0xFF) | (major << 8) | ((minor & ~0xFF) << 12))


def plan_fixups(image: Path, entries: Sequence[FlatEntry], flat_dir: Path, scratch: Path, *,
                large_inode: bool, prediction: Prediction | None = None) -> Script:
    """Map every entry to its inode and write the fixup script, in one debugfs run.

    The check of the predicted map runs in debugfs while this process reads
    the inodes back and writes the script for that map; a failed check throws
    the script away and does it all again from the slow, name-based listing.
    """
    prediction = prediction or predict(entries)
    listing = DirectoryListing(image, sorted(prediction.listings), scratch)
    try:
        script = fixup_script(entries, prediction.inodes,
                              read_inodes(image, prediction.inodes.values()),
                              scratch=scratch, large_inode=large_inode)
    except BaseException:
        listing.close()
        raise
    problem = listing_error(listing.result(), prediction.listings)
    if problem is None:
        return script
    inodes = list_inodes(image, entries, flat_dir, scratch)     # raises if they disagree
    log.warning("ext4.inode_prediction_failed", flat=str(flat_dir), reason=problem,
                hint="mkfs.ext4 -d numbered inodes differently than predicted; the build "
                     "used the slower listing (report this with the e2fsprogs version)")
    return fixup_script(entries, inodes, read_inodes(image, inodes.values()),
                        scratch=scratch, large_inode=large_inode)
