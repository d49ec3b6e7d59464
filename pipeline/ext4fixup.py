"""After mkfs.ext4 -d: find every entry's inode, then write the debugfs fixups.

mkfs.ext4 -d copies what ``lstat`` says about the staging tree, which an
unprivileged builder could not make true: owners, setuid bits, device
nodes, capabilities. This module maps each path of ``entries.jsonl`` to its
inode by listing directories with ``ls -p`` level by level (records, not
lines), checks that the staging tree and the entries agree (names, types,
sizes, hard-link groups), and writes one debugfs script that sets, by inode
number, what the entries declare:

- uid, gid and the full mode, setuid, setgid and sticky bits included;
- atime, ctime, mtime and crtime from the entry's mtime, nanoseconds and
  epoch bits in the ``*_extra`` fields (ext4 inode layout, "Inode
  Timestamps"), so host times never leak into the image;
- xattrs exactly as declared: host xattrs mkfs copied are removed, declared
  ones are set from files (binary values such as security.capability);
- device nodes, from their empty placeholder files: the inode becomes a
  character or block device (no EXTENTS flag, i_block[0..14] cleared, the
  device number in i_block[0] in the old 8:8 encoding when it fits, else in
  i_block[1] in the new one, as Linux's ext4_do_update_inode writes it), and
  the directory entry is relinked so its file type byte matches.

Nothing from the staging tree is trusted for metadata; it only has to agree
with ``entries.jsonl`` on names, types and link structure.
"""

from __future__ import annotations

import os
import stat
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from .debugfs import Script, list_directories, quote, xattr_value_files
from .errors import Ext4Error
from .ext4size import xattr_disk_name
from .flatimage import FileType, FlatEntry

__all__ = ["InodeMap", "map_inodes", "fixup_script", "time_fields", "ROOT_INO"]

log = structlog.get_logger(__name__)

ROOT_INO = 2
LOST_FOUND = "lost+found"

_TYPE_BITS = {
    FileType.REGULAR: stat.S_IFREG, FileType.DIRECTORY: stat.S_IFDIR,
    FileType.SYMLINK: stat.S_IFLNK, FileType.FIFO: stat.S_IFIFO,
    FileType.CHAR: stat.S_IFCHR, FileType.BLOCK: stat.S_IFBLK,
}
# Device nodes arrive as empty regular placeholder files.
_STAGED_BITS = {**_TYPE_BITS, FileType.CHAR: stat.S_IFREG, FileType.BLOCK: stat.S_IFREG}

# Time range ext4's 34-bit seconds can hold that e2fsck does not flag: from
# 1901 up to 2310-04-04, where e2fsck starts reading epoch bits 3 with the
# sign bit set as a pre-1970 time (pass1.c, check_inode_extra_negative_epoch).
_MIN_TIME = -(2**31)
_MAX_TIME_LARGE = 3 * 2**32 - 2**31 - 1
_MAX_TIME_SMALL = 2**31 - 1                # 128-byte inodes: 32-bit seconds only
_I_BLOCK_FIELDS = [f"block[{i}]" for i in range(12)] + ["block[IND]", "block[DIND]",
                                                         "block[TIND]"]


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


@dataclass(frozen=True, slots=True)
class InodeMap:
    """Where each entry landed: inode by path, and the names of each inode."""

    ino: dict[str, int]
    dir_ino: dict[str, int]
    """Inode of each entry's parent directory (root maps to itself)."""


def _basename(path: str) -> bytes:
    return os.fsencode(path.rpartition("/")[2])


def _disagree(flat_dir: Path, what: str) -> Ext4Error:
    return Ext4Error(f"flat image {flat_dir}: the staging tree and entries.jsonl disagree: "
                     f"{what}; delete this flat image so that flatten rebuilds it")


def map_inodes(image: Path, entries: Sequence[FlatEntry], flat_dir: Path,
               scratch: Path) -> InodeMap:
    """Inode number of every entry, checking names, types, sizes and hard links."""
    children: dict[str, list[FlatEntry]] = defaultdict(list)
    for entry in entries[1:]:
        children[entry.path.rpartition("/")[0]].append(entry)
    ino: dict[str, int] = {"": ROOT_INO}
    dir_ino: dict[str, int] = {"": ROOT_INO}
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
                dir_ino[entry.path] = ino[parent]
                if entry.type is FileType.DIRECTORY:
                    next_level.append(entry.path)
        level = next_level
    _check_links(entries, ino, flat_dir)
    return InodeMap(ino=ino, dir_ino=dir_ino)


def _staged_size(entry: FlatEntry) -> int | None:
    if entry.type is FileType.REGULAR:
        return entry.size
    if entry.type is FileType.SYMLINK:
        return len(os.fsencode(entry.target or ""))
    if entry.type in (FileType.CHAR, FileType.BLOCK, FileType.FIFO):
        return 0
    return None


def _check_links(entries: Sequence[FlatEntry], ino: dict[str, int], flat_dir: Path) -> None:
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


def fixup_script(entries: Sequence[FlatEntry], inodes: InodeMap, *, staging: Path,
                 scratch: Path, large_inode: bool) -> Script:
    """The one debugfs script that makes every inode what its entry declares."""
    script = Script()
    values = xattr_value_files((v for e in entries for _, v in e.xattrs), scratch)
    relinks: list[FlatEntry] = []
    done: set[int] = set()
    for entry in entries:
        number = inodes.ino[entry.path]
        if entry.type in (FileType.CHAR, FileType.BLOCK):
            relinks.append(entry)
        if number in done:
            continue                        # a further name of a hard-linked inode
        done.add(number)
        ref = f"<{number}>"
        mode = _TYPE_BITS[entry.type] | (entry.mode & 0o7777)
        if entry.type in (FileType.CHAR, FileType.BLOCK):
            _make_device(script, number, entry)
        script.sif(number, "uid", entry.uid)
        script.sif(number, "gid", entry.gid)
        script.sif(number, "mode", f"0{mode:o}")
        low, extra = time_fields(entry.mtime_ns, large_inode=large_inode)
        for field in ("atime", "ctime", "mtime", "crtime") if large_inode else \
                ("atime", "ctime", "mtime"):
            script.sif(number, field, f"@{low}")
            if extra is not None:
                script.sif(number, f"{field}_extra", extra)
        declared = {name for name, _ in entry.xattrs}
        for name in _host_xattrs(staging, entry):
            if name not in declared:
                script.command("ea_rm", ref, quote(os.fsencode(name), what="host xattr"))
        for name, value in entry.xattrs:
            if xattr_disk_name(name) is None:
                raise Ext4Error(f"{entry.path or '/'!r}: extended attribute {name!r} cannot "
                                f"be stored in ext4 (expected a user., trusted., security. "
                                f"or system.posix_acl_* name); drop it from the image")
            script.command("ea_set", "-f", quote(os.fsencode(str(values[value])), what="path"),
                           ref, quote(os.fsencode(name), what=f"xattr of {entry.path!r}"))
    # Relink device entries last, so the directory entry's file type byte is
    # taken from the finished inode (debugfs "link" uses ext2_file_type(mode)).
    for entry in relinks:
        quoted = quote(_basename(entry.path), what="device node name")
        script.command("cd", f"<{inodes.dir_ino[entry.path]}>")
        script.command("unlink", quoted)
        script.command("link", f"<{inodes.ino[entry.path]}>", quoted)
    return script


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


def _host_xattrs(staging: Path, entry: FlatEntry) -> list[str]:
    """Xattrs mkfs.ext4 -d may have copied from the staging file (llistxattr)."""
    path = staging / entry.path if entry.path else staging
    try:
        return sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return []
