"""Layer tar members from a tiny vocabulary, written byte for byte as we say.

``file``, ``dir``, ``symlink``, ``hardlink``, ``chardev``, ``blockdev``,
``fifo``, ``whiteout``, ``opaque`` cover what real layers hold; ``zeros`` is a
streamed regular file (bombs); ``raw`` writes any ``tarfile.TarInfo`` the way
``tarfile`` would (GNU long names, hand-made PAX headers, hostile names) and
``raw_bytes`` splices arbitrary bytes into the stream.

Vocabulary members are written with our own PAX encoder so that binary
``SCHILY.xattr.*`` values (``security.capability``) go out as raw bytes, the
way Go's archive/tar writes them; ``tarfile`` can only write text there.
Everything is deterministic: fixed mtime, empty uname/gname, no padding to a
10 KiB record (Go does not pad either).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

__all__ = ["Member", "MTIME", "file", "dir", "symlink", "hardlink", "chardev", "blockdev",
           "fifo", "whiteout", "opaque", "zeros", "raw", "raw_bytes", "write_tar",
           "tar_bytes"]

MTIME = 1_700_000_000
"""Default mtime of every member (2023-11-14T22:13:20Z): fixed so digests are stable."""
BLOCK = 512
_CHUNK = 1 << 20
_USTAR_NAME_MAX = 100
_USTAR_ID_MAX = 0o7777777
_USTAR_NUM_MAX = 0o77777777777

_TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
          "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
          "fifo": tarfile.FIFOTYPE, "zeros": tarfile.REGTYPE}

Xattrs = Mapping[str, "bytes | str"] | None


@dataclass(frozen=True, slots=True)
class Member:
    """One tar entry as it will be written (build them with the vocabulary functions)."""

    kind: str
    """file, dir, symlink, hardlink, char, block, fifo, zeros, raw or bytes."""
    path: str
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int = MTIME
    xattrs: tuple[tuple[str, bytes], ...] = ()
    target: str = ""
    major: int = 0
    minor: int = 0
    uname: str = ""
    gname: str = ""
    pax: tuple[tuple[str, bytes], ...] = ()
    """Extra PAX records written verbatim (after the computed ones, so they win)."""
    size: int | None = None
    """Header size when it must differ from ``len(data)`` (``zeros``; or a lie)."""
    info: tarfile.TarInfo | None = None
    format: int = tarfile.PAX_FORMAT

    @property
    def header_size(self) -> int:
        return len(self.data) if self.size is None else self.size


def _xattrs(xattrs: Xattrs) -> tuple[tuple[str, bytes], ...]:
    if not xattrs:
        return ()
    return tuple(sorted((k, v.encode() if isinstance(v, str) else bytes(v))
                        for k, v in xattrs.items()))


def _pax(pax: Mapping[str, bytes | str] | None) -> tuple[tuple[str, bytes], ...]:
    if not pax:
        return ()
    return tuple((k, v.encode() if isinstance(v, str) else bytes(v)) for k, v in pax.items())


def file(path: str, data: bytes = b"", *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: int = MTIME, xattrs: Xattrs = None, pax: Mapping[str, bytes | str] | None = None,
         size: int | None = None, uname: str = "", gname: str = "") -> Member:
    """A regular file. ``size`` larger than ``len(data)`` makes a member shorter than its
    header claims: the archive then ends right after ``data`` (a truncated tar)."""
    return Member("file", path, data, mode, uid, gid, mtime, _xattrs(xattrs), uname=uname,
                  gname=gname, pax=_pax(pax), size=size)


def dir(path: str, *, mode: int = 0o755, uid: int = 0, gid: int = 0,  # noqa: A001
        mtime: int = MTIME, xattrs: Xattrs = None,
        pax: Mapping[str, bytes | str] | None = None) -> Member:
    """A directory (tarfile appends the trailing ``/`` to its name)."""
    return Member("dir", path, b"", mode, uid, gid, mtime, _xattrs(xattrs), pax=_pax(pax))


def symlink(path: str, target: str, *, mode: int = 0o777, uid: int = 0, gid: int = 0,
            mtime: int = MTIME, xattrs: Xattrs = None) -> Member:
    return Member("symlink", path, b"", mode, uid, gid, mtime, _xattrs(xattrs), target=target)


def hardlink(path: str, target: str, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
             mtime: int = MTIME) -> Member:
    """A hard link to ``target`` (a path in this or a lower layer, as the tar names it)."""
    return Member("hardlink", path, b"", mode, uid, gid, mtime, target=target)


def chardev(path: str, major: int, minor: int, *, mode: int = 0o666, uid: int = 0,
            gid: int = 0, mtime: int = MTIME) -> Member:
    return Member("char", path, b"", mode, uid, gid, mtime, major=major, minor=minor)


def blockdev(path: str, major: int, minor: int, *, mode: int = 0o660, uid: int = 0,
             gid: int = 0, mtime: int = MTIME) -> Member:
    return Member("block", path, b"", mode, uid, gid, mtime, major=major, minor=minor)


def fifo(path: str, *, mode: int = 0o644, uid: int = 0, gid: int = 0,
         mtime: int = MTIME) -> Member:
    return Member("fifo", path, b"", mode, uid, gid, mtime)


def whiteout(path: str, *, mtime: int = MTIME) -> Member:
    """Delete ``path`` from lower layers: writes ``<parent>/.wh.<name>`` (OCI layer.md)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", mode=0o644, mtime=mtime)


def opaque(path: str, *, mtime: int = MTIME) -> Member:
    """Hide everything lower layers put in directory ``path``: ``<path>/.wh..wh..opq``."""
    path = path.rstrip("/")
    return file(f"{path}/.wh..wh..opq" if path else ".wh..wh..opq", mode=0o644, mtime=mtime)


def zeros(path: str, size: int, *, mode: int = 0o644, mtime: int = MTIME) -> Member:
    """A regular file of ``size`` zero bytes, streamed (never held in memory)."""
    return Member("zeros", path, b"", mode, mtime=mtime, size=size)


def raw(info: tarfile.TarInfo, data: bytes = b"", *, format: int = tarfile.PAX_FORMAT) -> Member:
    """Any TarInfo, encoded by ``tarfile`` itself in ``format`` (PAX, GNU or USTAR).

    ``info.size`` is what the header says; ``data`` is what follows it (padded).
    """
    return Member("raw", info.name, data, info=info, format=format, size=info.size)


def raw_bytes(data: bytes) -> Member:
    """Bytes spliced into the tar stream as they are (hand-made headers, junk)."""
    return Member("bytes", "", data)


def _pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode("utf-8") + b"=" + value + b"\n"
    total = len(body) + 1
    while len(body) + len(str(total)) != total:  # the prefix counts its own digits
        total = len(body) + len(str(total))
    return str(total).encode() + body


def _pad(n: int) -> bytes:
    return b"\0" * (-n % BLOCK)


def _fits(value: str, limit: int) -> bool:
    raw_value = value.encode("utf-8", "surrogateescape")
    return len(raw_value) <= limit and raw_value.isascii()


def _header(m: Member) -> bytes:
    """PAX extended header (when needed) + ustar header for a vocabulary member."""
    info = tarfile.TarInfo(m.path)
    info.type = _TYPES[m.kind]
    info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, m.mtime
    info.size = m.header_size if info.type == tarfile.REGTYPE else 0
    info.linkname, info.devmajor, info.devminor = m.target, m.major, m.minor
    info.uname, info.gname = m.uname, m.gname
    records: list[tuple[str, bytes]] = []
    name = m.path + ("/" if m.kind == "dir" and not m.path.endswith("/") else "")
    if not _fits(name, _USTAR_NAME_MAX):
        records.append(("path", name.encode("utf-8", "surrogateescape")))
        info.name = "././@LongName"  # placeholder; PAX readers use the record
    if m.target and not _fits(m.target, _USTAR_NAME_MAX):
        records.append(("linkpath", m.target.encode("utf-8", "surrogateescape")))
        info.linkname = "././@LongLink"
    for key in ("uid", "gid"):
        if getattr(m, key) > _USTAR_ID_MAX:
            records.append((key, str(getattr(m, key)).encode()))
            setattr(info, key, 0)
    if info.size > _USTAR_NUM_MAX:
        records.append(("size", str(info.size).encode()))
        info.size = 0
    records.extend((f"SCHILY.xattr.{k}", v) for k, v in m.xattrs)
    records.extend(m.pax)
    head = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    if not records:
        return head
    payload = b"".join(_pax_record(k, v) for k, v in records)
    xhdr = tarfile.TarInfo("././@PaxHeader")
    xhdr.type, xhdr.size, xhdr.mtime = tarfile.XHDTYPE, len(payload), m.mtime
    return xhdr.tobuf(tarfile.USTAR_FORMAT) + payload + _pad(len(payload)) + head


def write_tar(members: Iterable[Member]) -> Iterator[bytes]:
    """Yield the tar stream chunk by chunk, ending with two zero blocks.

    A member whose header claims more than its data ends the archive right
    after the data, with no padding and no end blocks.
    """
    for m in members:
        if m.kind == "bytes":
            yield m.data
            continue
        if m.kind == "raw":
            assert m.info is not None
            yield m.info.tobuf(m.format, "utf-8", "surrogateescape")
            yield m.data
            if m.info.size > len(m.data) and m.info.type in tarfile.REGULAR_TYPES:
                return
            yield _pad(len(m.data))
            continue
        yield _header(m)
        if m.kind == "zeros":
            left = m.header_size
            chunk = bytes(_CHUNK)
            while left > 0:
                yield chunk[:left] if left < _CHUNK else chunk
                left -= _CHUNK
            yield _pad(m.header_size)
            continue
        if m.kind != "file":
            continue
        yield m.data
        if m.header_size > len(m.data):
            return
        yield _pad(len(m.data))
    yield b"\0" * (2 * BLOCK)


def tar_bytes(members: Iterable[Member]) -> bytes:
    """The whole tar stream in memory (small layers only)."""
    return b"".join(write_tar(members))
