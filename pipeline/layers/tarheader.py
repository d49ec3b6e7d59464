"""Tar headers, parsed strictly: numbers, checksums, PAX records, names, whiteouts.

Pure functions of header bytes (no I/O): the tar reader in :mod:`.unpack`
reads the blocks and hands them here. Parsing follows Go's archive/tar (what
umoci and containerd use) where readers disagree: NUL-or-space padded octal
or base-256 numbers, the ustar prefix only for POSIX-magic headers, PAX
records override header fields, data only for regular files.

Refuses to trust, with one error class per reason: checksums and numeric
fields (:class:`~.errors.CorruptTar`); unknown entry types and GNU sparse
files (:class:`~.errors.UnsupportedEntry`); names, which are re-rooted, with
``.`` and empty components dropped and ``..`` resolved lexically and refused
when it would leave the root (:class:`~.errors.PathOutsideRoot`), NUL bytes and
over-long names refused (:class:`~.errors.BadName`,
:class:`~.errors.LimitExceeded`); whiteouts ``.wh.``, ``.wh..``, ``.wh...`` and
other ``.wh..wh.*`` names (:class:`~.errors.MalformedWhiteout`). Symlink
targets are kept verbatim: they are only ever resolved inside the tree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.errors import (
    BadName,
    CorruptTar,
    LayerError,
    LimitExceeded,
    MalformedWhiteout,
    PathOutsideRoot,
    UnsupportedEntry,
)
from pipeline.layers.limits import Limits
from pipeline.layers.store import EntryKind

__all__ = ["BLOCK", "ZERO_BLOCK", "HeaderContext", "Member", "Pending", "check_checksum",
           "parse_pax"]

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# Linux refuses symlink targets of PATH_MAX (4096) bytes or more.
MAX_SYMLINK_TARGET_BYTES = 4095
WHITEOUT_PREFIX = b".wh."
OPAQUE_NAME = b".wh..wh..opq"


@dataclass(frozen=True, slots=True)
class HeaderContext:
    """Which layer is being read and under which limits: what every error names."""

    layer: str
    limits: Limits

    def fail(self, cls: type[LayerError], message: str, member: bytes | None = None) -> LayerError:
        name = member.decode("utf-8", "surrogateescape") if member is not None else None
        return cls(self.layer, message, member=name)

    def number(self, field: bytes, what: str, block: bytes) -> int:
        value = parse_number(field)
        if value is None:
            raise self.fail(CorruptTar, f"header field {what} is not a number ({field!r})",
                            block[:100].split(b"\0", 1)[0])
        return value


@dataclass(slots=True)
class Pending:
    """Extended-header state that applies to the next real header."""

    name: bytes | None = None
    link: bytes | None = None
    pax: dict[bytes, bytes] | None = None


# Types whose size field says nothing about data (Go archive/tar isHeaderOnlyType).
_TYPES: dict[bytes, EntryKind] = {
    b"0": EntryKind.REGULAR, b"\0": EntryKind.REGULAR, b"7": EntryKind.REGULAR,
    b"1": EntryKind.HARDLINK, b"2": EntryKind.SYMLINK, b"3": EntryKind.CHAR,
    b"4": EntryKind.BLOCK, b"5": EntryKind.DIRECTORY, b"6": EntryKind.FIFO,
}


@dataclass(slots=True)
class Member:
    """One tar entry, normalized: the index record it becomes, plus its data size."""

    raw_name: bytes
    path: str
    kind: EntryKind
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    size: int
    data_size: int
    xattrs: tuple[tuple[str, bytes], ...]
    link: str | None
    rdev: tuple[int, int] | None

    @classmethod
    def parse(cls, block: bytes, pending: Pending, r: HeaderContext) -> Member:
        """The member a header block describes, with pending extended headers applied."""
        magic = block[257:265]
        ustar, gnu = magic == b"ustar\x0000", magic == b"ustar  \x00"
        name = cstring(block[0:100])
        if ustar and (prefix := cstring(block[345:500])):
            name = prefix + b"/" + name
        link = cstring(block[157:257])
        pax = pending.pax or {}
        name = pax.get(b"path", pending.name if pending.name is not None else name)
        link = pax.get(b"linkpath", pending.link if pending.link is not None else link)
        typeflag = block[156:157]
        if typeflag == b"S" or any(k.startswith(b"GNU.sparse.") for k in pax):
            raise r.fail(UnsupportedEntry, "GNU sparse files are not supported; rebuild the"
                          " layer without `tar --sparse`", name)
        kind = _TYPES.get(typeflag)
        if kind is None:
            raise r.fail(UnsupportedEntry, f"unknown tar entry type {typeflag!r}; only"
                          " regular files, directories, links, devices and fifos can be"
                          " part of a root filesystem", name)
        if typeflag == b"\0" and name.endswith(b"/"):
            kind = EntryKind.DIRECTORY  # pre-POSIX convention, as Go's reader does
        mode = r.number(block[100:108], "mode", block)
        uid = field(pax, b"uid", block, 108, 116, r, name)
        gid = field(pax, b"gid", block, 116, 124, r, name)
        size = field(pax, b"size", block, 124, 136, r, name)
        if b"mtime" in pax:
            mtime_ns = pax_time(pax[b"mtime"], r, name)
        else:
            mtime_ns = r.number(block[136:148], "mtime", block) * 1_000_000_000
        if min(mode, uid, gid, size) < 0:
            raise r.fail(CorruptTar, "negative mode, uid, gid or size", name)
        rdev = None
        if kind in (EntryKind.CHAR, EntryKind.BLOCK):
            if not (ustar or gnu):
                raise r.fail(CorruptTar, "device entry in a pre-POSIX header has no"
                              " device numbers", name)
            rdev = (r.number(block[329:337], "devmajor", block),
                    r.number(block[337:345], "devminor", block))
        data_size = size if kind is EntryKind.REGULAR else 0
        parts = split(name, r, name, what="name")
        base = parts[-1] if parts else b""
        target: str | None = None
        if base.startswith(WHITEOUT_PREFIX):
            kind, parts = whiteout(parts, r, name)
        elif kind is EntryKind.HARDLINK:
            target = join(split(link, r, name, what="hard-link target"))
        elif kind is EntryKind.SYMLINK:
            if not link or b"\0" in link or len(link) > MAX_SYMLINK_TARGET_BYTES:
                raise r.fail(BadName, f"symlink target must be 1 to {MAX_SYMLINK_TARGET_BYTES}"
                              f" bytes without NUL, got {link[:64]!r} ({len(link)} bytes)", name)
            target = link.decode("utf-8", "surrogateescape")
        xattrs = tuple(sorted(
            (k[13:].decode("utf-8", "surrogateescape"), v) for k, v in pax.items()
            if k.startswith(b"SCHILY.xattr.") and not k.startswith(b"SCHILY.xattr.trusted.")))
        if any(not k for k, _ in xattrs):
            raise r.fail(CorruptTar, "PAX xattr record with an empty name", name)
        return cls(raw_name=name, path=join(parts), kind=kind, mode=mode & 0o7777, uid=uid,
                   gid=gid, mtime_ns=mtime_ns, size=size, data_size=data_size, xattrs=xattrs,
                   link=target, rdev=rdev)


def split(raw: bytes, r: HeaderContext, member: bytes, *, what: str) -> list[bytes]:
    """Normalize a tar path: re-root, drop "." and "", resolve ".." lexically."""
    if b"\0" in raw:
        raise r.fail(BadName, f"{what} contains a NUL byte", member)
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not parts:
                raise r.fail(PathOutsideRoot, f"{what} {raw.decode('utf-8', 'surrogateescape')!r}"
                              " leaves the image root through '..'", member)
            parts.pop()
            continue
        if len(part) > r.limits.max_component_bytes:
            raise LimitExceeded(r.layer, f"a component of {what} is {len(part)} bytes, more than"
                                f" Limits.max_component_bytes = {r.limits.max_component_bytes}",
                                member=member.decode("utf-8", "surrogateescape")[:200])
        parts.append(part)
    if len(parts) > r.limits.max_depth:
        raise LimitExceeded(r.layer, f"{what} is {len(parts)} components deep, more than"
                            f" Limits.max_depth = {r.limits.max_depth} (deeper trees crash"
                            " mkfs.ext4)", member=member.decode("utf-8", "surrogateescape")[:200])
    if sum(map(len, parts)) + len(parts) > r.limits.max_path_bytes:
        raise LimitExceeded(r.layer, f"{what} is longer than Limits.max_path_bytes ="
                            f" {r.limits.max_path_bytes}",
                            member=member.decode("utf-8", "surrogateescape")[:200])
    return parts


def join(parts: list[bytes]) -> str:
    return b"/".join(parts).decode("utf-8", "surrogateescape")


def whiteout(parts: list[bytes], r: HeaderContext, member: bytes) -> tuple[EntryKind, list[bytes]]:
    """Classify a ``.wh.`` name (image-spec layer.md, "Whiteouts")."""
    base = parts[-1]
    if base == OPAQUE_NAME:
        return EntryKind.OPAQUE, parts[:-1]
    target = base[len(WHITEOUT_PREFIX):]
    if target in (b"", b".", b"..") or target.startswith(WHITEOUT_PREFIX):
        raise r.fail(MalformedWhiteout, f"whiteout {base.decode('utf-8', 'surrogateescape')!r}"
                      " names no file (expected '.wh.<name>' or '.wh..wh..opq')", member)
    return EntryKind.WHITEOUT, parts[:-1] + [target]


def cstring(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def parse_number(field: bytes) -> int | None:
    """A numeric header field: base-256 if the high bit is set, else padded octal."""
    if field and field[0] & 0x80:
        if field[0] not in (0x80, 0xFF):
            return None
        value = int.from_bytes(field[1:], "big")
        return value - (1 << (8 * (len(field) - 1))) if field[0] == 0xFF else value
    digits = field.strip(b" \0")
    if not digits:
        return 0
    if digits.translate(None, b"01234567"):  # anything but octal digits (int() allows "_")
        return None
    return int(digits, 8)


def check_checksum(block: bytes, layer: str) -> None:
    stored = parse_number(block[148:156])
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored == unsigned:
        return
    # Some old writers summed signed chars (POSIX allows readers to accept both).
    high = sum(1 for b in block if b & 0x80) - sum(1 for b in block[148:156] if b & 0x80)
    if stored != unsigned - 256 * high:
        raise CorruptTar(layer, f"tar header checksum mismatch (stored {stored}, computed"
                         f" {unsigned}); the layer is not a tar archive or is corrupt")


def parse_pax(data: bytes, layer: str) -> dict[bytes, bytes]:
    """PAX records, ``"%d %s=%s\\n"`` each (POSIX pax, "pax Extended Header")."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos, pos + 20)
        length = int(data[pos:space]) if space > pos and data[pos:space].isdigit() else 0
        record = data[pos:pos + length]
        if length <= space - pos + 1 or len(record) < length or not record.endswith(b"\n"):
            raise CorruptTar(layer, f"malformed PAX record at offset {pos}:"
                             f" {data[pos:pos + 40]!r}")
        key, eq, value = record[space - pos + 1:-1].partition(b"=")
        if not eq or not key:
            raise CorruptTar(layer, f"PAX record without key=value: {record[:40]!r}")
        records[key] = value
        pos += length
    return records


def field(pax: dict[bytes, bytes], key: bytes, block: bytes, start: int, end: int,
           r: HeaderContext, member: bytes) -> int:
    """A numeric field: the PAX record if there is one, else the header's."""
    if key in pax:
        return pax_int(pax, key, r, member)
    return r.number(block[start:end], key.decode(), block)


def pax_int(pax: dict[bytes, bytes], key: bytes, r: HeaderContext, member: bytes) -> int:
    value = pax[key]
    if not value.isdigit():
        raise r.fail(CorruptTar, f"PAX {key.decode()} is not a decimal number: {value[:40]!r}",
                      member)
    return int(value)


PAX_TIME = re.compile(rb"(-?)([0-9]+)(?:\.([0-9]*))?")


def pax_time(value: bytes, r: HeaderContext, member: bytes) -> int:
    """A PAX time ("-12.5") as integer nanoseconds, exactly (no float)."""
    m = PAX_TIME.fullmatch(value)
    if m is None:
        raise r.fail(CorruptTar, f"PAX mtime is not a decimal time: {value[:40]!r}", member)
    sign, whole, frac = m.groups()
    ns = int(whole) * 1_000_000_000 + int((frac or b"")[:9].ljust(9, b"0"))
    return -ns if sign else ns
