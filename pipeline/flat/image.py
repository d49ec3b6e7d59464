"""The flattened image on disk: the contract between flatten and the ext4 builder.

A flat image is a directory::

    <dir>/entries.jsonl  one FlatEntry per path, parents before children,
                         children in byte order (what mkfs.ext4 -d walks);
                         each regular file names its content: a layer of the
                         chain (by position) and where its bytes start in that
                         layer's pack
    <dir>/flat.v3.json   header: format version (also in its name), layer chain, counts
    <dir>/rootfs/        only when the mkfs builder needs it: a staging tree
                         whose names are the image's names: directories,
                         regular files (copies out of the layer packs),
                         symlinks, fifos, and empty regular placeholder files
                         where device nodes belong

``entries.jsonl`` carries the truth about ownership, modes, times, xattrs and
device numbers, which an unprivileged builder cannot put on host files, and
where each file's bytes are (the native builder reads them there, no staging
tree); the staging tree gives ``mkfs.ext4 -d`` names, contents and link
structure. Both ext4 builders trust only ``entries.jsonl`` for metadata.

Paths are ``str`` decoded from bytes with ``surrogateescape`` (as ``os.fsdecode``
does), so names that are not UTF-8 survive the round trip; JSON keeps lone
surrogates as ``\\udcXX`` escapes. A directory is written completely under a
temporary name and renamed into place, so a half-written flat image never
exists under its final name.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.base.jsonlines import read_lines

__all__ = ["FileType", "FlatEntry", "FlatHeader", "write_entries", "read_entries",
           "write_header", "read_header", "ENTRIES_NAME", "HEADER_NAME", "ROOTFS_NAME",
           "FORMAT_VERSION", "chain_key", "is_current"]

# 2: regular entries name their content (layer position, content number); the
# staging tree is optional. 3: the content is an offset in the layer's pack.
FORMAT_VERSION = 3
ROOTFS_NAME = "rootfs"
ENTRIES_NAME = "entries.jsonl"
# The format is in the header's name too: whether a finished flat image of this
# format exists is one stat (the up-to-date check of every flatten task).
HEADER_NAME = f"flat.v{FORMAT_VERSION}.json"


def chain_key(layer_digests: Sequence[str]) -> str:
    """The cache key of an ordered layer stack: sha256 hex over the digests, oldest first.

    Keyed by the compressed layer digests, as the layer stores are: the same
    layers in the same order give the same flat image, whichever image uses them.
    """
    h = hashlib.sha256()
    for digest in layer_digests:
        h.update(digest.encode("ascii"))
        h.update(b"\n")
    return h.hexdigest()


class FileType(enum.Enum):
    """The kinds of inode a root filesystem can hold (hard links are shared inodes)."""

    REGULAR = "f"
    DIRECTORY = "d"
    SYMLINK = "l"
    CHAR = "c"
    BLOCK = "b"
    FIFO = "p"


@dataclass(frozen=True, slots=True)
class FlatEntry:
    """One path of the flattened image with the metadata the image declared."""

    path: str
    """Components joined by "/", no leading "/"; the root directory is ""."""
    type: FileType
    mode: int
    """Permission bits including setuid, setgid and sticky (mask 0o7777)."""
    uid: int
    gid: int
    mtime_ns: int
    xattrs: tuple[tuple[str, bytes], ...] = ()
    """Sorted by name; values are raw bytes (e.g. binary security.capability)."""
    size: int = 0
    """Regular files: content length in bytes. Zero for everything else."""
    target: str | None = None
    """Symlinks: the link target exactly as the layer declared it."""
    rdev: tuple[int, int] | None = None
    """Char and block devices: (major, minor)."""
    link_group: int | None = None
    """Regular files with more than one name share a group number; None if nlink == 1."""
    content: tuple[int, int] | None = None
    """Regular files with bytes: (position of the layer in the chain, where the bytes
    start in its pack); None for empty files and everything else."""


@dataclass(frozen=True, slots=True)
class FlatHeader:
    """Summary of a flat image, enough to size a filesystem without reading entries."""

    chain: tuple[str, ...]
    """Ordered layer digests (oldest first) this image was flattened from."""
    entries: int
    inodes: int
    """Distinct inodes: entries minus extra hard-link names."""
    directories: int
    regular_bytes: int
    """Sum of the sizes of distinct regular-file inodes."""
    format: int = FORMAT_VERSION


# ensure_ascii keeps surrogate-escaped bytes as \udcXX, which json.loads restores. One
# encoder for all entries: json.dumps with options makes a new one per call.
_encode_json = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def _encode(entry: FlatEntry) -> str:
    record: dict[str, object] = {
        "p": entry.path,
        "t": entry.type.value,
        "m": entry.mode,
        "u": entry.uid,
        "g": entry.gid,
        "mt": entry.mtime_ns,
    }
    if entry.xattrs:
        record["x"] = [[name, base64.b64encode(value).decode("ascii")]
                       for name, value in entry.xattrs]
    if entry.size:
        record["s"] = entry.size
    if entry.target is not None:
        record["l"] = entry.target
    if entry.rdev is not None:
        record["r"] = list(entry.rdev)
    if entry.link_group is not None:
        record["h"] = entry.link_group
    if entry.content is not None:
        record["c"] = list(entry.content)
    return _encode_json(record)


_FILE_TYPES = {t.value: t for t in FileType}


def _decode(r: dict[str, Any]) -> FlatEntry:
    # Positional construction and direct lookups: this runs once per entry of
    # every image on each build, so it is kept to the bare minimum.
    get = r.get
    xattrs = get("x")
    rdev = get("r")
    content = get("c")
    return FlatEntry(
        r["p"], _FILE_TYPES[r["t"]], r["m"], r["u"], r["g"], r["mt"],
        tuple((name, base64.b64decode(value)) for name, value in xattrs) if xattrs else (),
        get("s", 0), get("l"), (rdev[0], rdev[1]) if rdev is not None else None, get("h"),
        (content[0], content[1]) if content is not None else None,
    )


def write_entries(path: Path, entries: Iterable[FlatEntry]) -> None:
    """Write entries, in the order given, one JSON record per line."""
    with open(path, "w", encoding="ascii") as f:
        for entry in entries:
            f.write(_encode(entry))
            f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def read_entries(path: Path) -> Iterator[FlatEntry]:
    """The entries in file order."""
    with open(path, encoding="ascii") as f:
        for record in read_lines(f):
            yield _decode(record)


def write_header(path: Path, header: FlatHeader) -> None:
    data = {
        "format": header.format,
        "chain": list(header.chain),
        "entries": header.entries,
        "inodes": header.inodes,
        "directories": header.directories,
        "regular_bytes": header.regular_bytes,
    }
    with open(path, "w", encoding="ascii") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def is_current(flat_dir: Path) -> bool:
    """Whether a finished flat image of this format is at ``flat_dir`` (one written by
    an older version is not: flatten makes it again). One stat: the name says the format."""
    return (Path(flat_dir) / HEADER_NAME).is_file()


def read_header(path: Path) -> FlatHeader:
    data = json.loads(Path(path).read_text(encoding="ascii"))
    if data.get("format") != FORMAT_VERSION:
        raise ValueError(f"internal error: flat image {path} has format "
                         f"{data.get('format')!r}, expected {FORMAT_VERSION}")
    return FlatHeader(
        chain=tuple(data["chain"]),
        entries=data["entries"],
        inodes=data["inodes"],
        directories=data["directories"],
        regular_bytes=data["regular_bytes"],
    )
