"""Layer blobs built from tar members: gzip, zstd or plain, well-formed or broken.

A :class:`Layer` carries its bytes, digest, size and the diff_id of the
uncompressed tar it was made from. The diff_id is always the honest one, even
when a hook breaks the blob (``truncate``, ``trailing``, a lying media type),
so a client's verification, not the test data, is what fails.

Compression is deterministic: gzip with mtime 0 and no file name, zstd at a
fixed level, so equal members give equal digests across runs.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import zstandard

from .tarball import BLOCK, Member, _header, write_tar, zeros

__all__ = ["Layer", "make_layer", "bomb", "OCI_LAYER_TYPES", "DOCKER_LAYER_TYPES", "sha256"]

OCI_LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}
DOCKER_LAYER_TYPES = {
    "none": "application/vnd.docker.image.rootfs.diff.tar",
    "gzip": "application/vnd.docker.image.rootfs.diff.tar.gzip",
    # containerd's name for it; Docker itself pushes zstd layers with OCI types.
    "zstd": "application/vnd.docker.image.rootfs.diff.tar.zstd",
}
GZIP_LEVEL = 6
ZSTD_LEVEL = 3
_BOMB_CHUNK = 1 << 20


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Layer:
    """A layer blob and what an image config and manifest say about it."""

    data: bytes
    digest: str
    """``sha256:<hex>`` of :attr:`data` (the blob as stored, broken or not)."""
    size: int
    diff_id: str
    """``sha256:<hex>`` of the complete uncompressed tar."""
    compression: str
    """What the bytes really are: gzip, zstd or none."""
    media_type: str
    """Declared OCI media type (may lie, see ``make_layer(declare=...)``)."""
    docker_media_type: str
    uncompressed_size: int
    members: tuple[Member, ...] = ()

    def media_type_for(self, *, oci: bool) -> str:
        return self.media_type if oci else self.docker_media_type

    def descriptor(self, *, oci: bool = True) -> dict[str, object]:
        return {"mediaType": self.media_type_for(oci=oci), "digest": self.digest,
                "size": self.size}


class _Sink:
    """Compresses chunks into memory while hashing and counting the input."""

    def __init__(self, compression: str, level: int | None) -> None:
        self.hash = hashlib.sha256()
        self.count = 0
        self.out = io.BytesIO()
        if compression == "gzip":
            # wbits 31 = gzip wrapper; zlib writes mtime 0 and no name: deterministic.
            self._c: object = zlib.compressobj(level or GZIP_LEVEL, zlib.DEFLATED, 31)
        elif compression == "zstd":
            self._c = zstandard.ZstdCompressor(level=level or ZSTD_LEVEL).compressobj()
        elif compression == "none":
            self._c = None
        else:
            raise ValueError(f"internal error: unknown compression {compression!r}")

    def write(self, chunk: bytes) -> None:
        self.hash.update(chunk)
        self.count += len(chunk)
        compressor = self._c
        self.out.write(chunk if compressor is None
                       else compressor.compress(chunk))  # type: ignore[attr-defined]

    def finish(self) -> bytes:
        if self._c is not None:
            self.out.write(self._c.flush())  # type: ignore[attr-defined]
        return self.out.getvalue()


def _finish(members: tuple[Member, ...], compressed: bytes, diff_id: str, count: int, *,
            compression: str, declare: str | None, media_type: str | None,
            truncate: int | None, trailing: bytes) -> Layer:
    if truncate is not None:
        compressed = compressed[:truncate]
    compressed += trailing
    declared = declare or compression
    oci_type = media_type or OCI_LAYER_TYPES[declared]
    docker_type = media_type or DOCKER_LAYER_TYPES[declared]
    return Layer(compressed, sha256(compressed), len(compressed), diff_id, compression,
                 oci_type, docker_type, count, members)


def make_layer(members: Iterable[Member], *, compression: str = "gzip",
               level: int | None = None, declare: str | None = None,
               media_type: str | None = None, truncate: int | None = None,
               trailing: bytes = b"") -> Layer:
    """Build a layer from members.

    Broken-layer hooks: ``declare`` names the compression the media type claims
    (``compression="zstd", declare="gzip"`` is zstd data declared gzip);
    ``media_type`` overrides the declared type outright; ``truncate`` keeps only
    that many bytes of the compressed blob (negative: drop that many from the
    end); ``trailing`` is appended after the compressed stream (garbage after
    gzip). A member whose header claims more than its data makes a short tar.
    """
    members = tuple(members)
    sink = _Sink(compression, level)
    for chunk in write_tar(members):
        sink.write(chunk)
    return _finish(members, sink.finish(), "sha256:" + sink.hash.hexdigest(), sink.count,
                   compression=compression, declare=declare, media_type=media_type,
                   truncate=truncate, trailing=trailing)


def _gzip_bomb(header: bytes, size: int, tail: bytes, hasher: object) -> Iterator[bytes]:
    """A gzip stream of header + ``size`` zeros + tail, made by repeating one deflate
    block: each piece comes from a fresh compressor ended with a full flush, so it
    refers to no earlier data and can be repeated (RFC 1951 section 3.2.3)."""
    def piece(data: bytes, last: bool = False) -> bytes:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        return c.compress(data) + c.flush(zlib.Z_FINISH if last else zlib.Z_FULL_FLUSH)

    crc = 0
    yield b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"  # magic, deflate, mtime 0, unix
    crc = zlib.crc32(header, crc)
    hasher.update(header)  # type: ignore[attr-defined]
    yield piece(header)
    zero = bytes(_BOMB_CHUNK)
    block = piece(zero)
    full, rest = divmod(size, _BOMB_CHUNK)
    for _ in range(full):
        crc = zlib.crc32(zero, crc)
        hasher.update(zero)  # type: ignore[attr-defined]
        yield block
    end = bytes(rest) + tail
    crc = zlib.crc32(end, crc)
    hasher.update(end)  # type: ignore[attr-defined]
    yield piece(end, last=True)
    total = len(header) + size + len(tail)
    yield struct.pack("<II", crc, total & 0xFFFFFFFF)


def bomb(size: int, *, compression: str = "gzip", path: str = "bomb") -> Layer:
    """A decompression bomb: one file of ``size`` zero bytes, compressed ~1000:1
    (gzip) or far more (zstd), generated streaming so memory stays at a few MiB.

    The diff_id is honest, computed over the whole stream (about 1 s per GiB).
    """
    member = zeros(path, size)
    if compression == "gzip":
        hasher = hashlib.sha256()
        tail = b"\0" * (-size % BLOCK) + b"\0" * (2 * BLOCK)
        data = b"".join(_gzip_bomb(_header(member), size, tail, hasher))
        count = len(_header(member)) + size + len(tail)
        return _finish((member,), data, "sha256:" + hasher.hexdigest(), count,
                       compression="gzip", declare=None, media_type=None, truncate=None,
                       trailing=b"")
    if compression == "zstd":
        return make_layer([member], compression="zstd", level=1)
    raise ValueError(f"internal error: a {compression!r} bomb would be as large as it claims")
