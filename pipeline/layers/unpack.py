"""Unpack one layer blob into its content store, trusting nothing in the tar.

``unpack_layer`` streams the blob file once (``unpack_stream`` does the same
from the blob's bytes as they download): decompress (:mod:`.compression`),
hash and count every uncompressed byte (the ``diff_id`` covers the whole
stream, trailing bytes after the end-of-archive blocks included), parse tar
headers with a strict reader of our own, append each regular file's bytes to
the store's pack and record every member in the index (:mod:`.store`).
The store appears under its final name only after the stream was read to its
end and the ``diff_id`` matched.

Refuses to trust, and says so with one error class per reason: header
bytes, names, link targets and whiteouts are checked by :mod:`.tarheader`;
here every size is bounded before it is read (:class:`~.errors.LimitExceeded`),
the stream must end where the archive says (:class:`~.errors.CorruptTar`),
and whiteouts (``.wh.<name>``, ``.wh..wh..opq``; image-spec layer.md,
"Whiteouts") become index records of their own. Global PAX headers are read,
validated and ignored, as Docker does.

Nothing here creates a host path from a tar path: contents go to the
store's one pack file only.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import structlog

from pipeline.base.digest import VerifyingHasher
from pipeline.errors import CorruptTar, LayerError, LimitExceeded
from pipeline.layers.compression import decompress_chunks, decompressed_chunks
from pipeline.layers.limits import Limits
from pipeline.layers.store import EntryKind, IndexEntry, LayerStore, StoreWriter
from pipeline.layers.stream import LayerStream
from pipeline.layers.tarheader import (
    BLOCK,
    ZERO_BLOCK,
    HeaderContext,
    Member,
    Pending,
    check_checksum,
    parse_pax,
)
from pipeline.oci.resolved import LayerRef

__all__ = ["Limits", "unpack_layer", "unpack_stream"]

log = structlog.get_logger(__name__)


def unpack_layer(blob: Path, layer: LayerRef, layers_root: Path, *,
                 limits: Limits = Limits()) -> LayerStore:
    """Unpack ``blob`` (the verified blob of ``layer``) into ``layers_root``.

    Returns the finished store, reusing one that already exists. Raises
    LayerError (and subclasses), LimitExceeded or DigestMismatch; on error
    nothing is left under the store's final name.
    """
    LayerStore.remove_stale(layers_root, layer.digest)
    if LayerStore.path_for(layers_root, layer.digest).exists():
        return LayerStore.open(layers_root, layer.digest)
    size = os.stat(blob).st_size
    if size != layer.size:
        raise LayerError(str(layer.digest), f"blob {str(blob)!r} is {size} bytes but the"
                         f" descriptor says {layer.size}; delete the cached blob and fetch it"
                         " again")
    return _unpack(decompressed_chunks(blob, layer.media_type, layer=str(layer.digest)), layer,
                   layers_root, limits)


def unpack_stream(chunks: Iterable[bytes], layer: LayerRef, layers_root: Path, *,
                  limits: Limits = Limits()) -> LayerStore:
    """Unpack ``layer`` from its blob's bytes as they arrive, e.g. during the download.

    ``chunks`` is the compressed blob in order, cut anywhere. The store is
    committed only when ``chunks`` ends (and the diff_id matched): whoever
    feeds it vouches for the bytes by ending it only once they are verified
    and raising otherwise, which aborts the store. Returns and raises like
    ``unpack_layer``.
    """
    LayerStore.remove_stale(layers_root, layer.digest)
    if LayerStore.path_for(layers_root, layer.digest).exists():
        return LayerStore.open(layers_root, layer.digest)
    return _unpack(decompress_chunks(chunks, layer.media_type, layer=str(layer.digest)), layer,
                   layers_root, limits)


def _unpack(decompressed: Iterator[bytes], layer: LayerRef, layers_root: Path,
            limits: Limits) -> LayerStore:
    digest = layer.digest
    where = str(digest)
    started = time.monotonic()
    hasher = VerifyingHasher(layer.diff_id, what=f"layer {digest} uncompressed (diff_id)")
    with StoreWriter(layers_root, digest, layer.diff_id) as writer:
        with LayerStream(decompressed, hasher, limit=limits.max_stream_bytes, layer=where,
                         background=True) as stream:
            _TarReader(stream, writer, limits, where).run()
            stream.drain()
        hasher.verify()
        store = writer.commit(stream_bytes=hasher.count)
    log.debug("layers.unpacked", digest=where, entries=store.entries_count,
              files=store.files_count, bytes=store.stream_bytes,
              seconds=round(time.monotonic() - started, 3))
    return store


class _TarReader:
    """Parses headers and writes contents + index records for one layer."""

    def __init__(self, stream: LayerStream, writer: StoreWriter, limits: Limits,
                 layer: str) -> None:
        self.stream = stream
        self.writer = writer
        self.limits = limits
        self.layer = layer
        self.ctx = HeaderContext(layer, limits)
        self.entries = 0

    def run(self) -> None:
        pending = Pending()
        while True:
            block = self.stream.read(BLOCK)
            if not block and pending == Pending():
                return  # end of input exactly at a header boundary (Go accepts this)
            if len(block) < BLOCK:
                raise CorruptTar(self.layer, "tar stream is truncated inside a header;"
                                 " the layer blob is incomplete")
            if block == ZERO_BLOCK:
                if pending != Pending():
                    raise CorruptTar(self.layer, "an extended header is followed by the end"
                                     " of the archive instead of an entry")
                after = self.stream.read(BLOCK)
                if after and after != ZERO_BLOCK:
                    raise CorruptTar(self.layer, "a non-zero block follows the first"
                                     " end-of-archive zero block")
                return
            self._header(block, pending)

    def _header(self, block: bytes, pending: Pending) -> None:
        check_checksum(block, self.layer)
        kind = block[156:157]
        size = self.ctx.number(block[124:136], "size", block)
        if kind in (b"x", b"g", b"L", b"K"):
            if size > self.limits.max_header_bytes:
                raise LimitExceeded(self.layer, f"a {kind.decode()!r} extended header holds"
                                    f" {size} bytes, more than Limits.max_header_bytes ="
                                    f" {self.limits.max_header_bytes}")
            data = self._data(size)
            if kind == b"x":
                pending.pax = {**(pending.pax or {}), **parse_pax(data, self.layer)}
            elif kind == b"g":
                parse_pax(data, self.layer)  # validated, then ignored like Docker does
            elif kind == b"L":
                pending.name = data.split(b"\0", 1)[0]
            else:
                pending.link = data.split(b"\0", 1)[0]
            return
        self.entries += 1
        if self.entries > self.limits.max_entries:
            raise LimitExceeded(self.layer, f"more than {self.limits.max_entries} entries"
                                " (Limits.max_entries)")
        member = Member.parse(block, pending, self.ctx)
        pending.name = pending.link = None
        pending.pax = None
        self._record(member)

    def _data(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) < size or self.stream.skip(-size % BLOCK) < -size % BLOCK:
            raise CorruptTar(self.layer, "tar stream is truncated inside an extended header")
        return data

    def _record(self, m: Member) -> None:
        w = self.writer
        if m.kind in (EntryKind.WHITEOUT, EntryKind.OPAQUE):
            self._skip_data(m)
            w.add(IndexEntry(path=m.path, kind=m.kind))
            return
        content = None
        if m.kind is EntryKind.REGULAR and m.size:
            content, copied = w.append_content(lambda fd: self.stream.copy_to(fd, m.size))
            if copied < m.size:
                raise self.ctx.fail(CorruptTar, f"tar stream ends inside this file's data"
                                 f" ({copied} of {m.size} bytes)", m.raw_name)
            if self.stream.skip(-m.size % BLOCK) < -m.size % BLOCK:
                raise self.ctx.fail(CorruptTar, "tar stream ends inside the padding after this"
                                 " file's data", m.raw_name)
        w.add(IndexEntry(path=m.path, kind=m.kind, mode=m.mode, uid=m.uid, gid=m.gid,
                         mtime_ns=m.mtime_ns, xattrs=m.xattrs,
                         size=m.size if m.kind is EntryKind.REGULAR else 0,
                         content=content, link=m.link, rdev=m.rdev))

    def _skip_data(self, m: Member) -> None:
        if m.data_size:
            want = m.data_size + (-m.data_size % BLOCK)
            if self.stream.skip(want) < want:
                raise self.ctx.fail(CorruptTar, "tar stream ends inside this entry's data",
                                 m.raw_name)
