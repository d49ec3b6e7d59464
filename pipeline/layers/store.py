"""The per-layer content store: one content pack plus an index, on disk.

One finished store per layer digest, shared by every image that uses the
layer and never modified after it is finished::

    <layers_root>/<hex>/
        content            every regular file's bytes, one after another in
                           archive order, nothing between them (mode 0444)
        index.jsonl        one record per tar member, in archive order
        store.v2.json      marker written last: format, digests, counts
        files/             only once an mkfs build needed it: each content as a
                           file of its own (``layers.extracted``)

One pack, not a file per member: a layer of thousands of small files is
then one sequential write, where a file each cost a create, an inode and a
journal entry apiece (5,778 files: 0.22 s on a calm disk, 2-4 s when the
host's journal stalls, against 0.1 s for the same bytes in one file). The
native writer copies byte ranges of the pack into the image; the mkfs
builder's staging trees hard-link to ``files/``, made from the pack once.

A store is built as ``<layers_root>/.tmp-<hex>-<pid>-<random>`` and renamed to
``<hex>`` when complete (pack, index and marker fsynced first), so the final
name only ever holds a finished store, after a power loss too; leftover
``.tmp-*`` directories are crashed builds and safe to delete.
:meth:`LayerStore.open` also requires the marker to name the same digest.

Index format, one JSON object per line (``ensure_ascii`` JSON, so every line is
ASCII): ``p`` path (components joined by "/", no leading "/", root is "";
``str`` decoded from the tar's bytes with UTF-8 + ``surrogateescape``, so any
byte string survives as ``\\udcXX`` escapes), ``t`` kind (EntryKind value),
``m`` permission bits incl. setuid/setgid/sticky, ``u``/``g`` numeric ids,
``mt`` mtime in ns; optional: ``x`` xattrs as ``[[name, base64 value], ...]``
sorted by name, ``s`` size, ``c`` where the file's ``s`` bytes start in
``content`` (absent for empty files), ``l`` link (symlink target verbatim; hard-link target
as a normalized path), ``r`` ``[major, minor]``. Whiteouts are kind ``w`` with
``p`` the path they remove; opaque markers are kind ``o`` with ``p`` the
directory whose lower contents they hide.

Trusts nothing from the tar: paths were normalized and checked by ``unpack``
before they reach an index, and contents only ever live in the pack.

The format is in the marker's name, so that whether a finished store of this
format exists is one stat (every unpack task's up-to-date check); a store of
an older format is replaced by the next unpack of its layer.
"""

from __future__ import annotations

import base64
import enum
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import structlog

from pipeline.base.digest import Digest, parse_digest
from pipeline.base.files import fsync_dir, publish_dir, remove_path, temp_path
from pipeline.base.jsonlines import read_lines
from pipeline.base.writeback import Writeback
from pipeline.errors import LayerError

__all__ = ["EntryKind", "IndexEntry", "LayerStore", "StoreWriter", "STORE_FORMAT",
           "PACK_NAME", "INDEX_NAME", "MARKER_NAME"]

log = structlog.get_logger(__name__)

STORE_FORMAT = 2
PACK_NAME = "content"
INDEX_NAME = "index.jsonl"
MARKER_NAME = f"store.v{STORE_FORMAT}.json"


class EntryKind(enum.Enum):
    """What one index record describes (tar types, plus OCI whiteouts)."""

    REGULAR = "f"
    DIRECTORY = "d"
    SYMLINK = "l"
    HARDLINK = "h"
    CHAR = "c"
    BLOCK = "b"
    FIFO = "p"
    WHITEOUT = "w"
    OPAQUE = "o"


@dataclass(frozen=True, slots=True)
class IndexEntry:
    """One tar member as recorded in a layer's index."""

    path: str
    kind: EntryKind
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime_ns: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    size: int = 0
    content: int | None = None
    link: str | None = None
    rdev: tuple[int, int] | None = None

    def to_json(self) -> str:
        # Built by hand (an index has one line per tar member): strings go through
        # the json module's C escaper with ensure_ascii semantics, so lone
        # surrogates from non-UTF-8 names come out as \udcXX escapes.
        out = ['{"p":', _quote(self.path), ',"t":"', self.kind.value, '"']
        if self.kind not in _NO_METADATA:
            out.append(f',"m":{self.mode},"u":{self.uid},"g":{self.gid},"mt":{self.mtime_ns}')
        if self.xattrs:
            out.append(',"x":[' + ",".join(
                f'[{_quote(k)},"{base64.b64encode(v).decode("ascii")}"]' for k, v in self.xattrs)
                + "]")
        if self.size:
            out.append(f',"s":{self.size}')
        if self.content is not None:
            out.append(f',"c":{self.content}')
        if self.link is not None:
            out.append(',"l":' + _quote(self.link))
        if self.rdev is not None:
            out.append(f',"r":[{self.rdev[0]},{self.rdev[1]}]')
        out.append("}")
        return "".join(out)

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> IndexEntry:
        """The entry of one decoded index line."""
        # Positional, with direct lookups: once per tar member of every layer flattened.
        get = r.get
        xattrs, rdev = get("x"), get("r")
        return cls(r["p"], _KINDS[r["t"]], get("m", 0), get("u", 0), get("g", 0),
                   get("mt", 0),
                   tuple((k, base64.b64decode(v)) for k, v in xattrs) if xattrs else (),
                   get("s", 0), get("c"), get("l"),
                   (rdev[0], rdev[1]) if rdev is not None else None)


_quote = json.encoder.encode_basestring_ascii
_KINDS = {kind.value: kind for kind in EntryKind}
_NO_METADATA = frozenset({EntryKind.WHITEOUT, EntryKind.OPAQUE, EntryKind.HARDLINK})


def _digest(digest: Digest | str) -> Digest:
    return digest if isinstance(digest, Digest) else parse_digest(digest)


class LayerStore:
    """A finished, immutable layer store on disk."""

    __slots__ = ("root", "digest", "diff_id", "entries_count", "files_count",
                 "content_bytes", "stream_bytes")

    def __init__(self, root: Path, marker: dict[str, object]) -> None:
        self.root = root
        self.digest = str(marker["digest"])
        self.diff_id = str(marker["diff_id"])
        self.entries_count = int(marker["entries"])  # type: ignore[call-overload]
        self.files_count = int(marker["files"])  # type: ignore[call-overload]
        self.content_bytes = int(marker["content_bytes"])  # type: ignore[call-overload]
        self.stream_bytes = int(marker["stream_bytes"])  # type: ignore[call-overload]

    def __repr__(self) -> str:
        return f"LayerStore({self.digest}, {self.entries_count} entries)"

    @classmethod
    def path_for(cls, layers_root: Path, digest: Digest | str) -> Path:
        """Where the finished store of ``digest`` lives (validated before use in a path)."""
        return Path(layers_root) / _digest(digest).hex

    @classmethod
    def remove_stale(cls, layers_root: Path, digest: Digest | str) -> None:
        """Remove what is at ``digest``'s store path unless it is a finished store of this
        format (one an older version left): the unpack that follows makes it again."""
        root = cls.path_for(layers_root, digest)
        if root.exists() and not (root / MARKER_NAME).is_file():
            log.info("layers.store_replaced", digest=str(digest),
                     reason="written by an older version")
            remove_path(root)

    @classmethod
    def open(cls, layers_root: Path, digest: Digest | str) -> LayerStore:
        """Open the finished store for ``digest``; LayerError if there is none."""
        digest = _digest(digest)
        root = cls.path_for(layers_root, digest)
        try:
            marker = json.loads((root / MARKER_NAME).read_text(encoding="ascii"))
        except FileNotFoundError:
            raise LayerError(str(digest), f"no finished layer store at {str(root)!r};"
                             " unpack the layer first") from None
        except (OSError, ValueError) as e:
            raise LayerError(str(digest), f"layer store {str(root)!r} is unreadable ({e});"
                             " delete it and unpack the layer again") from None
        if marker.get("format") != STORE_FORMAT or marker.get("digest") != str(digest):
            raise LayerError(str(digest), f"layer store {str(root)!r} has format"
                             f" {marker.get('format')!r} for {marker.get('digest')!r},"
                             f" expected format {STORE_FORMAT} for this digest;"
                             " delete it and unpack the layer again")
        return cls(root, marker)

    @property
    def pack_path(self) -> Path:
        """The file holding every regular file's bytes (an entry's ``content`` is an
        offset into it)."""
        return self.root / PACK_NAME

    def read_content(self, content: int, size: int) -> bytes:
        """The ``size`` bytes of the file whose data starts at ``content``; LayerError if the
        pack holds fewer (a damaged store)."""
        fd = os.open(self.pack_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = os.pread(fd, size, content) if size else b""
        finally:
            os.close(fd)
        if len(data) != size:
            raise LayerError(self.digest, f"layer store {str(self.root)!r} holds {len(data)}"
                             f" of the {size} bytes at {content} in its pack; delete it and"
                             " unpack the layer again")
        return data

    def entries(self) -> Iterator[IndexEntry]:
        """The index records in archive order."""
        with open(self.root / INDEX_NAME, encoding="ascii") as f:
            for record in read_lines(f):
                yield IndexEntry.from_record(record)


class StoreWriter:
    """Builds one store under a temporary name; ``commit`` renames it into place.

    Use as a context manager: leaving the block with an exception removes the
    temporary directory, so a failed unpack leaves nothing behind.
    """

    def __init__(self, layers_root: Path, digest: Digest, diff_id: Digest) -> None:
        self.layers_root = Path(layers_root)
        self.digest = digest
        self.diff_id = diff_id
        self.layers_root.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_path(LayerStore.path_for(self.layers_root, digest))
        os.mkdir(self.tmp, 0o700)
        self.pack_fd = os.open(self.tmp / PACK_NAME,
                               os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
        # The pack is fsynced before the marker says the store is finished; started as
        # it fills, the disk writes it while the layer is still being read.
        self._writeback = Writeback(self.pack_fd)
        # Kept open across add() calls; commit() or abort() closes it.
        self._index: IO[str] = open(self.tmp / INDEX_NAME, "w", encoding="ascii",  # noqa: SIM115
                                    buffering=1 << 20)
        self.entries = 0
        self.files = 0
        self.content_bytes = 0

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.abort()

    def append_content(self, copy: Callable[[int], int]) -> tuple[int, int]:
        """Append one file's bytes to the pack: ``copy(fd)`` writes them at the
        descriptor's position and returns how many it wrote. Returns (where they start,
        how many): the entry's ``content`` and the size to check against its own."""
        start = self.content_bytes
        written = copy(self.pack_fd)
        self.files += 1
        self.content_bytes += written
        self._writeback.written(self.content_bytes)
        return start, written

    def add(self, entry: IndexEntry) -> None:
        self._index.write(entry.to_json())
        self._index.write("\n")
        self.entries += 1

    def commit(self, *, stream_bytes: int) -> LayerStore:
        """Make the store durable and visible under its final name."""
        os.fsync(self.pack_fd)
        self._index.flush()
        os.fsync(self._index.fileno())
        self._index.close()
        marker = {"format": STORE_FORMAT, "digest": str(self.digest),
                  "diff_id": str(self.diff_id), "entries": self.entries, "files": self.files,
                  "content_bytes": self.content_bytes, "stream_bytes": stream_bytes}
        with open(self.tmp / MARKER_NAME, "w", encoding="ascii") as f:
            json.dump(marker, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        self._close_pack()
        fsync_dir(self.tmp)
        final = LayerStore.path_for(self.layers_root, self.digest)
        if not publish_dir(self.tmp, final):
            # Another process finished the same layer first: stores are
            # content-addressed, so theirs is as good as ours.
            log.debug("layers.store_raced", digest=str(self.digest))
            return LayerStore.open(self.layers_root, self.digest)
        return LayerStore(final, marker)

    def abort(self) -> None:
        try:
            self._index.close()
        finally:
            self._close_pack()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _close_pack(self) -> None:
        fd, self.pack_fd = self.pack_fd, -1
        if fd >= 0:
            os.close(fd)
