"""An image archive read in place: the offsets of its regular files, never extracted.

``ArchiveFiles.open`` walks the tar's headers once (seeking over member
data, so a multi-gigabyte archive costs a few reads) and keeps, for each
regular file, where its bytes start and how many there are. A blob is then
read with ``pread`` from that slice of the archive; nothing is written to
disk except by whoever copies it into the blob cache.

What it refuses to trust: every header. Member names are normalised as
tar paths (``./`` and duplicate slashes dropped) and a name that is
absolute, holds ``..``, NUL or control characters is refused at once (such
a member has no business in an image archive). Only regular files are
readable: a symlink or hard link member never stands in for a file (it
could point outside the archive or at another member), sparse members are
refused, and a name given twice is refused (two readers could take two
different files). Compressed archives are refused with the fix (tar offsets
exist only in a plain tar). Member count and the size of small documents
read into memory are capped.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import LocalSourceError

__all__ = ["ArchiveFiles", "MemberSlice", "MAX_MEMBERS", "normalise_member", "SliceReader"]

# docker save of a 100-layer image has ~300 members; an OCI layout of many
# images a few thousand. Past this the "archive" is a tar bomb of headers.
MAX_MEMBERS = 100_000
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2",
          b"\xfd7zXZ\x00": "xz"}
_READ_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class MemberSlice:
    """Where one regular file's bytes are in the archive."""

    offset: int
    size: int


def normalise_member(name: str, *, where: str) -> str:
    """A member (or a name some document in the archive gives) as a clean relative path."""
    if not name or _CONTROL.search(name) or name.startswith("/"):
        raise LocalSourceError(f"{where}: the name {name!r} is not a relative path inside "
                               "the archive; refusing it")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise LocalSourceError(f"{where}: the name {name!r} leaves the archive (or names "
                               "its root); refusing it")
    return "/".join(parts)


class ArchiveFiles:
    """The regular files of one uncompressed tar, by normalised name."""

    def __init__(self, path: Path, files: dict[str, MemberSlice], others: set[str]) -> None:
        self.path = path
        self.files = files
        self.others = others
        """Names of members that are not regular files (directories, links)."""

    @classmethod
    def scan(cls, path: Path) -> ArchiveFiles:
        where = f"archive {str(path)!r}"
        try:
            with open(path, "rb") as f:
                head = f.read(6)
                for magic, kind in _MAGIC.items():
                    if head.startswith(magic):
                        raise LocalSourceError(
                            f"{where} is {kind}-compressed; image archives are read in place, "
                            f"which needs a plain tar: decompress it first")
                f.seek(0)
                return cls(path, *_index(f, where))
        except FileNotFoundError:
            raise LocalSourceError(f"{where} does not exist; check the path (relative paths "
                                   "are relative to images.toml)") from None
        except IsADirectoryError:
            raise LocalSourceError(f"{where} is a directory; an OCI layout directory is "
                                   "written oci:<dir>") from None
        except PermissionError as err:
            raise LocalSourceError(f"{where}: cannot read it ({err.strerror})") from None

    def member(self, name: str, *, where: str) -> MemberSlice:
        """The slice of the regular file ``name``; a clear error when it is not one."""
        clean = normalise_member(name, where=where)
        found = self.files.get(clean)
        if found is not None:
            return found
        if clean in self.others:
            raise LocalSourceError(f"{where}: {clean!r} in archive {str(self.path)!r} is not a "
                                   "regular file (a link or directory); refusing it")
        raise LocalSourceError(f"{where}: archive {str(self.path)!r} has no file {clean!r}")

    def size(self, name: str, *, where: str) -> int:
        return self.member(name, where=where).size

    def read(self, name: str, limit: int, *, where: str) -> bytes:
        """The whole of a small member (a JSON document), at most ``limit`` bytes."""
        found = self.member(name, where=where)
        if found.size > limit:
            raise LocalSourceError(f"{where}: {name!r} is {found.size} bytes, more than the "
                                   f"{limit} byte limit")
        with self.open(name, where=where) as stream:
            return stream.read(found.size)

    @contextmanager
    def open(self, name: str, *, where: str) -> Iterator[SliceReader]:
        """A reader of member ``name``'s bytes (checked against its digest by the caller)."""
        found = self.member(name, where=where)
        fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            yield SliceReader(fd, found)
        finally:
            os.close(fd)


class SliceReader:
    """``read()`` over one member's bytes, by ``pread`` (no shared file position)."""

    def __init__(self, fd: int, found: MemberSlice) -> None:
        self._fd, self._end, self._pos = fd, found.offset + found.size, found.offset

    def read(self, n: int = -1) -> bytes:
        left = self._end - self._pos
        n = left if n < 0 else min(n, left)
        out = bytearray()
        while len(out) < n:
            chunk = os.pread(self._fd, min(n - len(out), _READ_BYTES), self._pos)
            if not chunk:
                break  # the archive shrank under us: the hash check will say so
            out += chunk
            self._pos += len(chunk)
        return bytes(out)


def _index(f: BinaryIO, where: str) -> tuple[dict[str, MemberSlice], set[str]]:
    files: dict[str, MemberSlice] = {}
    others: set[str] = set()
    try:
        archive = tarfile.open(fileobj=f, mode="r:")
    except tarfile.TarError as err:
        raise LocalSourceError(f"{where} is not a readable tar ({err})") from None
    count = 0
    try:
        while (info := archive.next()) is not None:
            count += 1
            if count > MAX_MEMBERS:
                raise LocalSourceError(f"{where} has more than {MAX_MEMBERS} members; "
                                       "refusing it as an image archive")
            if info.isdir() and info.name.strip("./") == "":
                continue  # "./": `tar -C layout -cf image.tar .` writes the root first
            name = normalise_member(info.name, where=f"{where} member")
            if name in files or name in others:
                raise LocalSourceError(f"{where} holds {name!r} twice; refusing an ambiguous "
                                       "archive")
            if info.issparse():
                raise LocalSourceError(f"{where}: member {name!r} is a sparse file; refusing it")
            if info.isreg():
                files[name] = MemberSlice(info.offset_data, info.size)
            else:
                others.add(name)
    except tarfile.TarError as err:
        raise LocalSourceError(f"{where} is a corrupt tar ({err})") from None
    return files, others
