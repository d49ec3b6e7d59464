"""Unpack one layer blob into its content store, trusting nothing in the tar.

``unpack_layer`` streams the blob once: decompress (:mod:`.compression`),
hash and count every uncompressed byte (the ``diff_id`` covers the whole
stream, trailing bytes after the end-of-archive blocks included), parse tar
headers with a strict reader of our own, write each regular file's bytes to
a numbered file and record every member in the index (:mod:`.layerstore`).
The store appears under its final name only after the stream was read to its
end and the ``diff_id`` matched.

Refuses to trust, and says so with one error class per reason:

- header bytes: checksums and numeric fields are validated
  (:class:`CorruptTar`), every size is bounded before it is read
  (:class:`~.errors.LimitExceeded`), unknown entry types and GNU sparse
  files are refused, not skipped (:class:`UnsupportedEntry`);
- names: absolute names are re-rooted, ``.`` and empty components dropped,
  ``..`` resolved lexically and refused when it would leave the root
  (:class:`PathOutsideRoot`); NUL bytes and over-long names are refused;
  hard-link targets get the same treatment, symlink targets are kept
  verbatim (they are only ever resolved inside the tree, by :mod:`.tree`);
- whiteouts: ``.wh.<name>`` and ``.wh..wh..opq`` (image-spec layer.md,
  "Whiteouts") become index records of their own; ``.wh.``, ``.wh..``,
  ``.wh...`` and other ``.wh..wh.*`` names are :class:`MalformedWhiteout`.

Nothing here creates a host path from a tar path: contents go to
``files/NNNNNN`` only. Tar parsing follows Go's archive/tar (what umoci and
containerd use) where readers disagree: NUL-or-space padded octal or base-256
numbers, the ustar prefix only for POSIX-magic headers, PAX records override
header fields, global PAX headers are read and ignored, data only for regular
files.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog

from .compression import LayerStream, decompressed_chunks
from .digest import Digest, VerifyingHasher
from .errors import (BadName, CorruptTar, LayerError, LimitExceeded, MalformedWhiteout,
                     PathOutsideRoot, UnsupportedEntry)
from .layerstore import EntryKind, IndexEntry, LayerStore, StoreWriter

__all__ = ["Limits", "unpack_layer", "LayerDescriptor"]

log = structlog.get_logger(__name__)

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30
BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
# Linux refuses symlink targets of PATH_MAX (4096) bytes or more.
MAX_SYMLINK_TARGET_BYTES = 4095
WHITEOUT_PREFIX = b".wh."
OPAQUE_NAME = b".wh..wh..opq"


@dataclass(frozen=True, slots=True)
class Limits:
    """Safety limits for one layer; defaults are far above any real image."""

    max_stream_bytes: int = 64 * GiB
    """Uncompressed tar stream incl. headers: stops decompression bombs (big real
    layers are a few GiB; ML images reach tens)."""
    max_entries: int = 10_000_000
    """Tar members: index and in-memory tree grow with it (a full distro is ~100 k)."""
    max_header_bytes: int = 1 * MiB
    """One PAX or GNU long-name header's data, read into memory whole."""
    max_path_bytes: int = 4096
    """A normalized path or hard-link target (Linux PATH_MAX)."""
    max_component_bytes: int = 255
    """One path component (NAME_MAX on ext4 and the staging filesystem)."""


class LayerDescriptor(Protocol):
    """What unpack needs of a layer (``pipeline.resolve.LayerRef`` has it)."""

    @property
    def digest(self) -> Digest: ...
    @property
    def size(self) -> int: ...
    @property
    def media_type(self) -> str: ...
    @property
    def diff_id(self) -> Digest: ...


def unpack_layer(blob: Path, layer: LayerDescriptor, layers_root: Path, *,
                 limits: Limits = Limits()) -> LayerStore:
    """Unpack ``blob`` (the verified blob of ``layer``) into ``layers_root``.

    Returns the finished store, reusing one that already exists. Raises
    LayerError (and subclasses), LimitExceeded or DigestMismatch; on error
    nothing is left under the store's final name.
    """
    digest = layer.digest
    if LayerStore.path_for(layers_root, digest).exists():
        return LayerStore.open(layers_root, digest)
    where = str(digest)
    size = os.stat(blob).st_size
    if size != layer.size:
        raise LayerError(where, f"blob {str(blob)!r} is {size} bytes but the descriptor says"
                         f" {layer.size}; delete the cached blob and fetch it again")
    started = time.monotonic()
    hasher = VerifyingHasher(layer.diff_id, what=f"layer {digest} uncompressed (diff_id)")
    with StoreWriter(layers_root, digest, layer.diff_id) as writer:
        with LayerStream(decompressed_chunks(blob, layer.media_type, layer=where), hasher,
                         limit=limits.max_stream_bytes, layer=where, background=True) as stream:
            _TarReader(stream, writer, limits, where).run()
            stream.drain()
        hasher.verify()
        store = writer.commit(stream_bytes=hasher.count)
    log.debug("layer_unpacked", digest=where, entries=store.entries_count,
              files=store.files_count, bytes=store.stream_bytes,
             seconds=round(time.monotonic() - started, 3))
    return store


@dataclass(slots=True)
class _Pending:
    """Extended-header state that applies to the next real header."""

    name: bytes | None = None
    link: bytes | None = None
    pax: dict[bytes, bytes] | None = None


class _TarReader:
    """Parses headers and writes contents + index records for one layer."""

    def __init__(self, stream: LayerStream, writer: StoreWriter, limits: Limits,
                 layer: str) -> None:
        self.stream = stream
        self.writer = writer
        self.limits = limits
        self.layer = layer
        self.entries = 0

    def run(self) -> None:
        pending = _Pending()
        while True:
            block = self.stream.read(BLOCK)
            if not block and pending == _Pending():
                return  # end of input exactly at a header boundary (Go accepts this)
            if len(block) < BLOCK:
                raise CorruptTar(self.layer, "tar stream is truncated inside a header;"
                                 " the layer blob is incomplete")
            if block == ZERO_BLOCK:
                if pending != _Pending():
                    raise CorruptTar(self.layer, "an extended header is followed by the end"
                                     " of the archive instead of an entry")
                after = self.stream.read(BLOCK)
                if after and after != ZERO_BLOCK:
                    raise CorruptTar(self.layer, "a non-zero block follows the first"
                                     " end-of-archive zero block")
                return
            self._header(block, pending)

    def _fail(self, cls: type[LayerError], message: str, member: bytes | None = None) -> LayerError:
        name = member.decode("utf-8", "surrogateescape") if member is not None else None
        return cls(self.layer, message, member=name)

    def _header(self, block: bytes, pending: _Pending) -> None:
        _check_checksum(block, self.layer)
        kind = block[156:157]
        size = self._number(block[124:136], "size", block)
        if kind in (b"x", b"g", b"L", b"K"):
            if size > self.limits.max_header_bytes:
                raise LimitExceeded(self.layer, f"a {kind.decode()!r} extended header holds"
                                    f" {size} bytes, more than Limits.max_header_bytes ="
                                    f" {self.limits.max_header_bytes}")
            data = self._data(size)
            if kind == b"x":
                pending.pax = {**(pending.pax or {}), **_parse_pax(data, self.layer)}
            elif kind == b"g":
                _parse_pax(data, self.layer)  # validated, then ignored like Docker does
            elif kind == b"L":
                pending.name = data.split(b"\0", 1)[0]
            else:
                pending.link = data.split(b"\0", 1)[0]
            return
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise LimitExceeded(self.layer, f"more than {self.limits.max_entries} entries"
                                " (Limits.max_entries)")
        member = _Member.parse(block, pending, self)
        pending.name = pending.link = None
        pending.pax = None
        self._record(member)

    def _number(self, field: bytes, what: str, block: bytes) -> int:
        value = _parse_number(field)
        if value is None:
            raise self._fail(CorruptTar, f"header field {what} is not a number ({field!r})",
                             block[:100].split(b"\0", 1)[0])
        return value

    def _data(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) < size or self.stream.skip(-size % BLOCK) < -size % BLOCK:
            raise CorruptTar(self.layer, "tar stream is truncated inside an extended header")
        return data

    def _record(self, m: _Member) -> None:
        w = self.writer
        if m.kind in (EntryKind.WHITEOUT, EntryKind.OPAQUE):
            self._skip_data(m)
            w.add(IndexEntry(path=m.path, kind=m.kind))
            return
        content = None
        if m.kind is EntryKind.REGULAR and m.size:
            content, fd = w.new_content()
            try:
                copied = self.stream.copy_to(fd, m.size)
            finally:
                os.close(fd)
            if copied < m.size:
                raise self._fail(CorruptTar, f"tar stream ends inside this file's data"
                                 f" ({copied} of {m.size} bytes)", m.raw_name)
            if self.stream.skip(-m.size % BLOCK) < -m.size % BLOCK:
                raise self._fail(CorruptTar, "tar stream ends inside the padding after this"
                                 " file's data", m.raw_name)
        w.add(IndexEntry(path=m.path, kind=m.kind, mode=m.mode, uid=m.uid, gid=m.gid,
                         mtime_ns=m.mtime_ns, xattrs=m.xattrs,
                         size=m.size if m.kind is EntryKind.REGULAR else 0,
                         content=content, link=m.link, rdev=m.rdev))

    def _skip_data(self, m: _Member) -> None:
        if m.data_size:
            want = m.data_size + (-m.data_size % BLOCK)
            if self.stream.skip(want) < want:
                raise self._fail(CorruptTar, "tar stream ends inside this entry's data",
                                 m.raw_name)


# Types whose size field says nothing about data (Go archive/tar isHeaderOnlyType).
_TYPES: dict[bytes, EntryKind] = {
    b"0": EntryKind.REGULAR, b"\0": EntryKind.REGULAR, b"7": EntryKind.REGULAR,
    b"1": EntryKind.HARDLINK, b"2": EntryKind.SYMLINK, b"3": EntryKind.CHAR,
    b"4": EntryKind.BLOCK, b"5": EntryKind.DIRECTORY, b"6": EntryKind.FIFO,
}


@dataclass(slots=True)
class _Member:
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
    def parse(cls, block: bytes, pending: _Pending, r: _TarReader) -> _Member:
        magic = block[257:265]
        ustar, gnu = magic == b"ustar\x0000", magic == b"ustar  \x00"
        name = _cstring(block[0:100])
        if ustar and (prefix := _cstring(block[345:500])):
            name = prefix + b"/" + name
        link = _cstring(block[157:257])
        pax = pending.pax or {}
        name = pax.get(b"path", pending.name if pending.name is not None else name)
        link = pax.get(b"linkpath", pending.link if pending.link is not None else link)
        typeflag = block[156:157]
        if typeflag == b"S" or any(k.startswith(b"GNU.sparse.") for k in pax):
            raise r._fail(UnsupportedEntry, "GNU sparse files are not supported; rebuild the"
                          " layer without `tar --sparse`", name)
        kind = _TYPES.get(typeflag)
        if kind is None:
            raise r._fail(UnsupportedEntry, f"unknown tar entry type {typeflag!r}; only"
                          " regular files, directories, links, devices and fifos can be"
                          " part of a root filesystem", name)
        if typeflag == b"\0" and name.endswith(b"/"):
            kind = EntryKind.DIRECTORY  # pre-POSIX convention, as Go's reader does
        mode = r._number(block[100:108], "mode", block)
        uid = _field(pax, b"uid", block, 108, 116, r, name)
        gid = _field(pax, b"gid", block, 116, 124, r, name)
        size = _field(pax, b"size", block, 124, 136, r, name)
        if b"mtime" in pax:
            mtime_ns = _pax_time(pax[b"mtime"], r, name)
        else:
            mtime_ns = r._number(block[136:148], "mtime", block) * 1_000_000_000
        if min(mode, uid, gid, size) < 0:
            raise r._fail(CorruptTar, "negative mode, uid, gid or size", name)
        rdev = None
        if kind in (EntryKind.CHAR, EntryKind.BLOCK):
            if not (ustar or gnu):
                raise r._fail(CorruptTar, "device entry in a pre-POSIX header has no"
                              " device numbers", name)
            rdev = (r._number(block[329:337], "devmajor", block),
                    r._number(block[337:345], "devminor", block))
        data_size = size if kind is EntryKind.REGULAR else 0
        parts = _split(name, r, name, what="name")
        base = parts[-1] if parts else b""
        target: str | None = None
        if base.startswith(WHITEOUT_PREFIX):
            kind, parts = _whiteout(parts, r, name)
        elif kind is EntryKind.HARDLINK:
            target = _join(_split(link, r, name, what="hard-link target"))
        elif kind is EntryKind.SYMLINK:
            if not link or b"\0" in link or len(link) > MAX_SYMLINK_TARGET_BYTES:
                raise r._fail(BadName, f"symlink target must be 1 to {MAX_SYMLINK_TARGET_BYTES}"
                              f" bytes without NUL, got {link[:64]!r} ({len(link)} bytes)", name)
            target = link.decode("utf-8", "surrogateescape")
        xattrs = tuple(sorted(
            (k[13:].decode("utf-8", "surrogateescape"), v) for k, v in pax.items()
            if k.startswith(b"SCHILY.xattr.") and not k.startswith(b"SCHILY.xattr.trusted.")))
        if any(not k for k, _ in xattrs):
            raise r._fail(CorruptTar, "PAX xattr record with an empty name", name)
        return cls(raw_name=name, path=_join(parts), kind=kind, mode=mode & 0o7777, uid=uid,
                   gid=gid, mtime_ns=mtime_ns, size=size, data_size=data_size, xattrs=xattrs,
                   link=target, rdev=rdev)


def _split(raw: bytes, r: _TarReader, member: bytes, *, what: str) -> list[bytes]:
    """Normalize a tar path: re-root, drop "." and "", resolve ".." lexically."""
    if b"\0" in raw:
        raise r._fail(BadName, f"{what} contains a NUL byte", member)
    parts: list[bytes] = []
    for part in raw.split(b"/"):
        if part in (b"", b"."):
            continue
        if part == b"..":
            if not parts:
                raise r._fail(PathOutsideRoot, f"{what} {raw.decode('utf-8', 'surrogateescape')!r}"
                              " leaves the image root through '..'", member)
            parts.pop()
            continue
        if len(part) > r.limits.max_component_bytes:
            raise LimitExceeded(r.layer, f"a component of {what} is {len(part)} bytes, more than"
                                f" Limits.max_component_bytes = {r.limits.max_component_bytes}",
                                member=member.decode("utf-8", "surrogateescape")[:200])
        parts.append(part)
    if sum(map(len, parts)) + len(parts) > r.limits.max_path_bytes:
        raise LimitExceeded(r.layer, f"{what} is longer than Limits.max_path_bytes ="
                            f" {r.limits.max_path_bytes}",
                            member=member.decode("utf-8", "surrogateescape")[:200])
    return parts


def _join(parts: list[bytes]) -> str:
    return b"/".join(parts).decode("utf-8", "surrogateescape")


def _whiteout(parts: list[bytes], r: _TarReader, member: bytes) -> tuple[EntryKind, list[bytes]]:
    """Classify a ``.wh.`` name (image-spec layer.md, "Whiteouts")."""
    base = parts[-1]
    if base == OPAQUE_NAME:
        return EntryKind.OPAQUE, parts[:-1]
    target = base[len(WHITEOUT_PREFIX):]
    if target in (b"", b".", b"..") or target.startswith(WHITEOUT_PREFIX):
        raise r._fail(MalformedWhiteout, f"whiteout {base.decode('utf-8', 'surrogateescape')!r}"
                      " names no file (expected '.wh.<name>' or '.wh..wh..opq')", member)
    return EntryKind.WHITEOUT, parts[:-1] + [target]


def _cstring(field: bytes) -> bytes:
    return field.split(b"\0", 1)[0]


def _parse_number(field: bytes) -> int | None:
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


def _check_checksum(block: bytes, layer: str) -> None:
    stored = _parse_number(block[148:156])
    unsigned = sum(block) - sum(block[148:156]) + 8 * 32
    if stored == unsigned:
        return
    # Some old writers summed signed chars (POSIX allows readers to accept both).
    high = sum(1 for b in block if b & 0x80) - sum(1 for b in block[148:156] if b & 0x80)
    if stored != unsigned - 256 * high:
        raise CorruptTar(layer, f"tar header checksum mismatch (stored {stored}, computed"
                         f" {unsigned}); the layer is not a tar archive or is corrupt")


def _parse_pax(data: bytes, layer: str) -> dict[bytes, bytes]:
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


def _field(pax: dict[bytes, bytes], key: bytes, block: bytes, start: int, end: int,
           r: _TarReader, member: bytes) -> int:
    """A numeric field: the PAX record if there is one, else the header's."""
    if key in pax:
        return _pax_int(pax, key, r, member)
    return r._number(block[start:end], key.decode(), block)


def _pax_int(pax: dict[bytes, bytes], key: bytes, r: _TarReader, member: bytes) -> int:
    value = pax[key]
    if not value.isdigit():
        raise r._fail(CorruptTar, f"PAX {key.decode()} is not a decimal number: {value[:40]!r}",
                      member)
    return int(value)


_PAX_TIME = re.compile(rb"(-?)([0-9]+)(?:\.([0-9]*))?")


def _pax_time(value: bytes, r: _TarReader, member: bytes) -> int:
    """A PAX time ("-12.5") as integer nanoseconds, exactly (no float)."""
    m = _PAX_TIME.fullmatch(value)
    if m is None:
        raise r._fail(CorruptTar, f"PAX mtime is not a decimal time: {value[:40]!r}", member)
    sign, whole, frac = m.groups()
    ns = int(whole) * 1_000_000_000 + int((frac or b"")[:9].ljust(9, b"0"))
    return -ns if sign else ns
