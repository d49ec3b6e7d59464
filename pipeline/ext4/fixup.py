"""After mkfs.ext4 -d: the one debugfs script that makes every inode what it must be.

mkfs.ext4 -d copies what ``lstat`` says about the staging tree, which an
unprivileged builder could not make true: owners, setuid bits, device
nodes, capabilities. ``plan_fixups`` maps every entry to its inode
(:mod:`.ext4inodes`: predicted, then proven in one debugfs run that this
process overlaps with reading back what mkfs wrote, :mod:`.ext4readback`)
and writes one script that changes only what differs from what the entries
declare (``fixup_script``). Skipping a write of a value already there gives
the same bytes, so root and unprivileged builders still agree byte for byte.

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

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import structlog

from pipeline.errors import Ext4Error
from pipeline.ext4.debugfs import DirectoryListing, Script, quote, xattr_value_files
from pipeline.ext4.disk import xattr_disk_name
from pipeline.ext4.inodes import (
    TYPE_BITS,
    InodeMap,
    Prediction,
    basename,
    list_inodes,
    listing_error,
    predict,
)
from pipeline.ext4.readback import InodeFields, read_inodes
from pipeline.flat.image import FileType, FlatEntry

__all__ = ["clamped_times", "fixup_script", "plan_fixups", "time_fields"]

log = structlog.get_logger(__name__)

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


def clamped_times(entries: Sequence[FlatEntry], *, large_inode: bool) -> tuple[str, ...]:
    """The paths whose time ``time_fields`` clamps: what the build record reports."""
    high = _MAX_TIME_LARGE if large_inode else _MAX_TIME_SMALL
    return tuple(e.path for e in entries
                 if not _MIN_TIME <= e.mtime_ns // 10**9 <= high)


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
        mode = TYPE_BITS[entry.type] | (entry.mode & 0o7777)
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
        quoted = quote(basename(entry.path), what="device node name")
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
                large_inode: bool,
                prediction: Prediction | None = None) -> Script:
    """Map every entry to its inode and write the fixup script, in one debugfs run, for
    the map proven against the image.

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
