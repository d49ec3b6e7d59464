"""Layer compression: media types, magic-byte sniffing, bounded decompression.

A layer blob is gzip (possibly several members), zstd (possibly several frames,
skippable frames anywhere) or a plain tar. The descriptor's media type says
which; the first bytes must agree, because a blob whose content disagrees with
its descriptor was produced or served wrongly and nothing else about it can be
trusted either (image-spec layer.md, "Zstd Media Types" and "Gzip Media Types").
The blob comes from a file (``decompressed_chunks``) or as any iterator of
byte chunks, e.g. a download as it arrives (``decompress_chunks``): one
implementation, cut-anywhere safe.

Refuses to trust: the media type alone, the compressed stream's own idea of
how much it expands (every decompression call has a bounded output, so a bomb
is stopped by the caller's byte limit after at most one chunk), and the end
of the stream (a gzip member or zstd frame cut short is an error, and so is
anything after the last member or frame).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, cast

import zstandard
from isal import isal_zlib

from pipeline.errors import CompressionMismatch, CorruptStream, UnknownMediaType
from pipeline.oci import mediatypes as mt

__all__ = ["Compression", "LAYER_MEDIA_TYPES", "compression_for", "sniff",
           "decompressed_chunks", "decompress_chunks", "CHUNK_BYTES"]

# 1 MiB reads and outputs: large enough that per-call overhead vanishes next to
# inflate and sha256, small enough that a bomb yields at most this much before
# the caller's limit check sees it.
CHUNK_BYTES = 1 << 20


class Compression(enum.Enum):
    NONE = "tar"
    GZIP = "gzip"
    ZSTD = "zstd"


# Every layer media type we accept (image-spec media-types.md, Docker image
# manifest v2 schema 2; names in :mod:`.mediatypes`). Nondistributable
# ("foreign") layers are unpacked like any other when we have their bytes.
LAYER_MEDIA_TYPES: dict[str, Compression] = {
    media_type: Compression.NONE if kind == "none" else Compression(kind)
    for media_type, kind in mt.LAYER_COMPRESSION.items()
}
for _foreign in mt.NON_DISTRIBUTABLE_TYPES:
    LAYER_MEDIA_TYPES[_foreign] = (Compression.GZIP if _foreign.endswith("gzip") else
                                   Compression.ZSTD if _foreign.endswith("zstd") else
                                   Compression.NONE)

_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# Skippable frames: magic 0x184D2A50..0x184D2A5F little-endian (RFC 8878 3.1.2).
_SKIPPABLE_MASK, _SKIPPABLE_BASE = 0xFFFFFFF0, 0x184D2A50


def compression_for(media_type: str, *, layer: str) -> Compression:
    """The compression a layer media type promises; unknown types are refused."""
    try:
        return LAYER_MEDIA_TYPES[media_type]
    except KeyError:
        raise UnknownMediaType(
            layer, f"unknown layer media type {media_type!r}; expected one of the OCI"
            " or Docker layer types (tar, tar+gzip, tar+zstd)") from None


def sniff(head: bytes) -> Compression:
    """What the first bytes of a blob say it is; anything not gzip or zstd is tar."""
    if head.startswith(_GZIP_MAGIC):
        return Compression.GZIP
    if head.startswith(_ZSTD_MAGIC):
        return Compression.ZSTD
    if len(head) >= 4 and struct.unpack("<I", head[:4])[0] & _SKIPPABLE_MASK == _SKIPPABLE_BASE:
        return Compression.ZSTD
    return Compression.NONE


def decompressed_chunks(blob: Path, media_type: str, *, layer: str) -> Iterator[bytes]:
    """Yield the uncompressed layer stream of the blob file, in chunks of at most CHUNK_BYTES.

    Raises UnknownMediaType, CompressionMismatch or CorruptStream; the caller
    hashes, counts and limits what it receives.
    """
    with open(blob, "rb", buffering=0) as f:
        yield from decompress_chunks(iter(lambda: f.read(CHUNK_BYTES), b""), media_type,
                                     layer=layer)


def decompress_chunks(chunks: Iterable[bytes], media_type: str, *,
                      layer: str) -> Iterator[bytes]:
    """Yield the uncompressed layer stream of the compressed ``chunks``, at most CHUNK_BYTES each.

    ``chunks`` are the blob's bytes in order, cut anywhere (a file read in
    pieces, or a download as it arrives); the end of the iterator is the end
    of the blob. Raises like ``decompressed_chunks``.
    """
    declared = compression_for(media_type, layer=layer)
    source = _Source(chunks)
    head = source.peek(4)
    found = sniff(head)
    magic = {Compression.GZIP: _GZIP_MAGIC, Compression.ZSTD: _ZSTD_MAGIC}.get(declared)
    if found is not declared and magic is not None and magic.startswith(head):
        raise CorruptStream(layer, f"the {declared.value} blob is truncated to {len(head)}"
                            " bytes; delete the cached blob and fetch it again")
    if found is not declared:
        raise CompressionMismatch(
            layer, f"media type {media_type!r} promises {declared.value} but the blob"
            f" starts like {found.value} (first bytes {head.hex()!r}); the registry"
            " or the image builder mislabelled this layer")
    if declared is Compression.GZIP:
        yield from _gunzip(source, layer)
    elif declared is Compression.ZSTD:
        yield from _unzstd(source, layer)
    else:
        while chunk := source.read(CHUNK_BYTES):
            yield chunk


class _Source:
    """Raw-file reads over an iterator of byte chunks: short reads, ``b""`` only at the end.

    Hands out the iterator's own chunks when they fit, so the file path and
    the download path copy nothing; empty chunks are skipped, never taken
    for the end.
    """

    __slots__ = ("_chunks", "_buf", "_pos")

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buf = b""
        self._pos = 0

    def _more(self) -> bool:
        for chunk in self._chunks:
            if chunk:
                self._buf = self._buf[self._pos:] + chunk if self._pos < len(self._buf) \
                    else chunk
                self._pos = 0
                return True
        return False

    def peek(self, n: int) -> bytes:
        """Up to ``n`` bytes from the current position, without consuming them."""
        while len(self._buf) - self._pos < n and self._more():
            pass
        return self._buf[self._pos:self._pos + n]

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf) and not self._more():
            return b""
        if n < 0 or (self._pos == 0 and n >= len(self._buf)):
            data = self._buf[self._pos:] if self._pos else self._buf
        else:
            data = self._buf[self._pos:self._pos + n]
        self._pos += len(data)
        return data


def _gunzip(f: _Source, layer: str) -> Iterator[bytes]:
    """Inflate every gzip member (RFC 1952 2.2: a file is a series of members)."""
    d = isal_zlib.decompressobj(31)
    pending = b""
    try:
        while True:
            if not pending:
                pending = f.read(CHUNK_BYTES)
                if not pending:
                    # Inflate can hold output back when a call fills max_length
                    # with all input consumed: drain it before judging the end.
                    while not d.eof and (out := d.decompress(b"", CHUNK_BYTES)):
                        yield out
                    break
            if d.eof:
                if not pending.startswith(_GZIP_MAGIC[: len(pending)]):
                    raise CorruptStream(layer, f"{len(pending)}+ bytes after the last gzip"
                                        f" member are not gzip (they start {pending[:8].hex()!r})")
                d = isal_zlib.decompressobj(31)
            out = d.decompress(pending, CHUNK_BYTES)
            pending = d.unused_data if d.eof else d.unconsumed_tail
            if out:
                yield out
    except isal_zlib.error as e:  # type: ignore[misc]  # isal's stub leaves `error` untyped
        raise CorruptStream(layer, f"gzip stream is corrupt: {e}") from None
    if not d.eof:
        raise CorruptStream(layer, "gzip stream is truncated: the last member has no end;"
                            " delete the cached blob and fetch it again")


def _unzstd(f: _Source, layer: str) -> Iterator[bytes]:
    """Decompress every zstd frame, skipping skippable frames (RFC 8878 3.1)."""
    tracker = _FrameTracker(f, layer)
    # stream_reader only calls read(); the stub asks for a whole IO[bytes].
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast("IO[bytes]", tracker), read_size=CHUNK_BYTES, read_across_frames=True, closefd=False)
    try:
        while chunk := reader.read(CHUNK_BYTES):
            yield chunk
    except zstandard.ZstdError as e:
        raise CorruptStream(layer, f"zstd stream is corrupt: {e}") from None
    tracker.finish()


class _FrameTracker:
    """A file wrapper that follows zstd frame and block boundaries as bytes pass.

    The zstd library stops quietly when its input ends inside a frame; this
    walks headers (a few bytes per block, skipping block bodies) so that a
    truncated stream is an error. It runs lazily, as the decompressor reads,
    so a bomb is stopped by the output limit before the walk costs much.
    """

    def __init__(self, f: _Source, layer: str) -> None:
        self._f = f
        self._layer = layer
        self._header = b""      # bytes of a header being collected
        self._need = 4          # how many header bytes the current state wants
        self._state = "magic"   # magic, skipsize, fhd, fheader, block, checksum
        self._skip = 0          # body bytes to pass over before the next header
        self._checksum = False
        self._offset = 0        # stream offset of the first byte of this read
        self._at = 0            # stream offset of the header being judged

    def read(self, n: int = -1) -> bytes:
        data = self._f.read(n if n >= 0 else CHUNK_BYTES)
        self._walk(memoryview(data))
        return data

    def readinto(self, b: bytearray) -> int:  # not used by zstandard, kept for io protocol
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)

    def _walk(self, data: memoryview) -> None:
        pos, end = 0, len(data)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._header), end - pos)
            self._header += bytes(data[pos:pos + take])
            pos += take
            if len(self._header) == self._need:
                self._at = self._offset + pos - self._need
                self._advance()
        self._offset += end

    def _advance(self) -> None:
        h, self._header = self._header, b""
        state = self._state
        if state == "magic":
            (magic,) = struct.unpack("<I", h)
            if magic & _SKIPPABLE_MASK == _SKIPPABLE_BASE:
                self._state, self._need = "skipsize", 4
            elif h == _ZSTD_MAGIC:
                self._state, self._need = "fhd", 1
            else:
                raise CorruptStream(self._layer, f"bytes at offset {self._at} are not a zstd"
                                    f" frame (they start {h.hex()!r})")
        elif state == "skipsize":
            (self._skip,) = struct.unpack("<I", h)
            self._state, self._need = "magic", 4
        elif state == "fhd":
            fhd = h[0]
            if fhd & 0x08:
                raise CorruptStream(self._layer, "zstd frame header has its reserved bit set")
            single = bool(fhd & 0x20)
            fcs = (0, 2, 4, 8)[fhd >> 6] or (1 if single else 0)
            self._checksum = bool(fhd & 0x04)
            rest = (0 if single else 1) + (0, 1, 2, 4)[fhd & 0x03] + fcs
            self._state, self._need = "fheader", rest
            if rest == 0:
                self._state, self._need = "block", 3
        elif state == "fheader":
            self._state, self._need = "block", 3
        elif state == "block":
            (word,) = struct.unpack("<I", h + b"\0")
            last, kind, size = word & 1, (word >> 1) & 3, word >> 3
            if kind == 3:
                raise CorruptStream(self._layer, "zstd block has the reserved block type 3")
            self._skip = 1 if kind == 1 else size
            if last:
                self._state, self._need = ("checksum", 4) if self._checksum else ("magic", 4)
        elif state == "checksum":
            self._state, self._need = "magic", 4
        if self._need == 0:  # pragma: no cover - every state above wants bytes
            raise AssertionError("internal error: zstd frame tracker wants 0 bytes")

    def finish(self) -> None:
        """Raise CorruptStream unless the input ended exactly between frames."""
        if self._f.read(1):
            raise CorruptStream(self._layer, "zstd decoder stopped before the end of the blob;"
                                " the bytes after it are not zstd frames")
        if self._state != "magic" or self._header or self._skip:
            raise CorruptStream(self._layer, "zstd stream is truncated inside a frame;"
                                " delete the cached blob and fetch it again")
