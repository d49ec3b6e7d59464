"""The files of a local image source, by name: a directory or an archive read in place.

``SourceFiles`` is what the layout and docker-archive readers see: ``size``,
``read`` (a small document, capped) and ``open`` (a blob, streamed) of a
relative name such as ``index.json`` or ``blobs/sha256/<hex>``.
``DirectoryFiles`` serves them from an OCI layout directory,
``archive.ArchiveFiles`` from a tar.

What it refuses to trust: every name (it may come from a document inside
the source) and the directory itself. A name is normalised and refused if
it is absolute or holds ``..``; the file it names is resolved with every
symlink followed and must still be inside the directory (compared by whole
path components, not string prefix) and be a regular file, so a layout
whose ``blobs`` is a symlink to ``/etc`` reads nothing outside it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

from pipeline.errors import LocalSourceError
from pipeline.local.archive import normalise_member

__all__ = ["SourceFiles", "Readable", "DirectoryFiles"]


class Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


class SourceFiles(Protocol):
    """Named regular files of one layout or archive."""

    path: Path

    def size(self, name: str, *, where: str) -> int: ...

    def read(self, name: str, limit: int, *, where: str) -> bytes: ...

    def open(self, name: str, *, where: str) -> AbstractContextManager[Readable]: ...


class DirectoryFiles:
    """The regular files under one directory, never a file outside it."""

    def __init__(self, path: Path) -> None:
        where = f"OCI layout {str(path)!r}"
        try:
            self.root = Path(os.path.realpath(path, strict=True))
        except OSError:
            raise LocalSourceError(f"{where} does not exist; check the path (relative paths "
                                   "are relative to images.toml)") from None
        if not self.root.is_dir():
            raise LocalSourceError(f"{where} is not a directory; a layout in a tar is "
                                   "written oci-archive:<file>")
        self.path = path

    def _locate(self, name: str, *, where: str) -> tuple[Path, os.stat_result]:
        clean = normalise_member(name, where=where)
        try:
            real = Path(os.path.realpath(self.root / clean, strict=True))
        except OSError:
            raise LocalSourceError(f"{where}: layout {str(self.path)!r} has no file "
                                   f"{clean!r}") from None
        if os.path.commonpath([self.root, real]) != str(self.root):
            raise LocalSourceError(f"{where}: {clean!r} in layout {str(self.path)!r} resolves "
                                   f"to {str(real)!r}, outside the layout; refusing it")
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise LocalSourceError(f"{where}: {clean!r} in layout {str(self.path)!r} is not a "
                                   "regular file")
        return real, st

    def size(self, name: str, *, where: str) -> int:
        return self._locate(name, where=where)[1].st_size

    def read(self, name: str, limit: int, *, where: str) -> bytes:
        with self.open(name, where=where) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise LocalSourceError(f"{where}: {name!r} is more than the {limit} byte limit")
        return data

    @contextmanager
    def open(self, name: str, *, where: str) -> Iterator[BinaryIO]:
        real, _ = self._locate(name, where=where)
        # O_NOFOLLOW: the resolved path is final; a symlink swapped in since is refused.
        try:
            fd = os.open(real, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as err:
            raise LocalSourceError(f"{where}: cannot read {name!r} in layout "
                                   f"{str(self.path)!r} ({err.strerror})") from None
        with os.fdopen(fd, "rb") as f:
            yield f
