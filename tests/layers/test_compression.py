"""pipeline.layers.compression: media types, sniffing, gzip/zstd/plain streams."""

from __future__ import annotations

import gzip
import hashlib
import random
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from pipeline.errors import CompressionMismatch, CorruptStream, PipelineError, UnknownMediaType
from pipeline.layers import compression
from pipeline.layers.compression import (
    CHUNK_BYTES,
    LAYER_MEDIA_TYPES,
    Compression,
    compression_for,
    decompress_chunks,
    decompressed_chunks,
    sniff,
)

OCI = "application/vnd.oci.image.layer.v1.tar"
GZ = OCI + "+gzip"
ZST = OCI + "+zstd"
LAYER = "sha256:" + "ab" * 32


def skippable(payload: bytes, nibble: int = 0) -> bytes:
    return struct.pack("<II", 0x184D2A50 | nibble, len(payload)) + payload


def payload(n: int, seed: int = 1) -> bytes:
    """Half random, half repetitive: compresses, but not to nothing."""
    rng = random.Random(seed)
    return b"".join(rng.randbytes(64) + b"x" * 64 for _ in range(n // 128 + 1))[:n]


def pieces(blob: bytes, seed: int) -> Iterator[bytes]:
    """``blob`` cut the way a download may deliver it: single bytes, empty pieces, odd sizes."""
    rng = random.Random(seed)
    at = 0
    while at < len(blob):
        n = rng.choice((0, 1, 1, 2, 3, 5, 4096, 65536, 70001, CHUNK_BYTES + 1))
        yield blob[at:at + n]
        at += n


def outcome(chunks: Iterator[bytes]) -> bytes | tuple[type[Exception], str]:
    try:
        found = list(chunks)
    except PipelineError as err:
        return type(err), str(err)
    assert all(0 < len(c) <= CHUNK_BYTES for c in found)
    return b"".join(found)


def run(tmp_path: Path, blob: bytes, media_type: str) -> bytes:
    """Decompress ``blob`` from a file (raising its error); the same bytes arriving in pieces
    must give the same stream or the same error."""
    path = tmp_path / "blob"
    path.write_bytes(blob)
    expected = outcome(decompressed_chunks(path, media_type, layer=LAYER))
    for seed in range(3):
        assert outcome(decompress_chunks(pieces(blob, seed), media_type, layer=LAYER)) \
            == expected, f"pieces seed {seed}"
    return b"".join(decompressed_chunks(path, media_type, layer=LAYER))


@pytest.mark.parametrize(("head", "expected"), [
    (b"\x1f\x8b\x08\x00", Compression.GZIP),
    (b"\x28\xb5\x2f\xfd", Compression.ZSTD),
    (struct.pack("<I", 0x184D2A5F), Compression.ZSTD),
    (b"etc/", Compression.NONE),
    (b"", Compression.NONE),
    (b"\x1f", Compression.NONE),
], ids=["gzip", "zstd", "zstd-skippable", "tar", "empty", "short"])
def test_sniff(head: bytes, expected: Compression) -> None:
    assert sniff(head) is expected


@pytest.mark.parametrize(("media_type", "expected"), [
    (OCI, Compression.NONE), (GZ, Compression.GZIP), (ZST, Compression.ZSTD),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", Compression.GZIP),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", Compression.ZSTD),
    ("application/vnd.oci.image.layer.nondistributable.v1.tar", Compression.NONE),
    ("application/vnd.docker.image.rootfs.diff.tar.gzip", Compression.GZIP),
    ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", Compression.GZIP),
    ("application/vnd.docker.image.rootfs.diff.tar", Compression.NONE),
])
def test_layer_media_types(media_type: str, expected: Compression) -> None:
    assert compression_for(media_type, layer=LAYER) is expected
    assert LAYER_MEDIA_TYPES[media_type] is expected


@pytest.mark.parametrize("media_type", [
    "application/vnd.oci.image.layer.v1.tar+bzip2", "application/octet-stream",
    "application/vnd.oci.image.config.v1+json", "", GZ.upper()])
def test_unknown_media_type_is_refused(tmp_path: Path, media_type: str) -> None:
    with pytest.raises(UnknownMediaType) as err:
        run(tmp_path, gzip.compress(b"x"), media_type)
    assert str(err.value) == (
        f"layer {LAYER}: unknown layer media type {media_type!r}; expected one of the OCI"
        " or Docker layer types (tar, tar+gzip, tar+zstd)")


@pytest.mark.parametrize(("blob", "media_type", "found"), [
    (zstandard.ZstdCompressor().compress(b"tar"), GZ, "zstd"),
    (gzip.compress(b"tar"), ZST, "gzip"),
    (b"plain tar bytes", GZ, "tar"),
    (gzip.compress(b"tar"), OCI, "gzip"),
    (skippable(b"meta") + zstandard.ZstdCompressor().compress(b"tar"), OCI, "zstd"),
], ids=["zstd-declared-gzip", "gzip-declared-zstd", "tar-declared-gzip",
        "gzip-declared-tar", "zstd-skippable-declared-tar"])
def test_content_must_match_media_type(tmp_path: Path, blob: bytes, media_type: str,
                                       found: str) -> None:
    with pytest.raises(CompressionMismatch) as err:
        run(tmp_path, blob, media_type)
    declared = compression_for(media_type, layer=LAYER).value
    assert str(err.value) == (
        f"layer {LAYER}: media type {media_type!r} promises {declared} but the blob starts"
        f" like {found} (first bytes {blob[:4].hex()!r}); the registry or the image builder"
        " mislabelled this layer")


def test_plain_tar_passes_through(tmp_path: Path) -> None:
    data = payload(3 * CHUNK_BYTES + 5)
    assert run(tmp_path, data, OCI) == data


def test_gzip_members_are_concatenated(tmp_path: Path) -> None:
    parts = [payload(1000, 1), b"", payload(3 * CHUNK_BYTES, 2), payload(7, 3)]
    blob = b"".join(gzip.compress(p) for p in parts)
    assert run(tmp_path, blob, GZ) == b"".join(parts)


@pytest.mark.parametrize("chunk", [4096, 65536])
def test_gzip_output_held_back_at_end_of_input_is_drained(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    # Inflate can fill max_length with all input consumed and still owe output;
    # small chunks make that happen at the very end of the blob too.
    monkeypatch.setattr(compression, "CHUNK_BYTES", chunk)
    for n in range(20):
        data = b"a" * (chunk * 7 + n * 977) + payload(n * 131, n) + b"b" * (chunk * 3)
        path = tmp_path / "blob"
        path.write_bytes(gzip.compress(data))
        assert b"".join(decompressed_chunks(path, GZ, layer=LAYER)) == data


@pytest.mark.parametrize(("trailing", "start"), [
    (b"garbage!", "6761726261676521"), (b"\0" * 512, "0000000000000000"),
    (b"\x1f", None), (b"\x1f\x8b", None),
], ids=["garbage", "zero-padding", "half-magic", "bare-magic"])
def test_gzip_trailing_bytes_are_refused(tmp_path: Path, trailing: bytes,
                                         start: str | None) -> None:
    with pytest.raises(CorruptStream) as err:
        run(tmp_path, gzip.compress(payload(5000)) + trailing, GZ)
    if start is not None:
        assert str(err.value) == (f"layer {LAYER}: {len(trailing)}+ bytes after the last gzip"
                                  f" member are not gzip (they start {start!r})")
    else:
        assert "truncated" in str(err.value) or "corrupt" in str(err.value)


def test_gzip_truncated_anywhere_fails(tmp_path: Path) -> None:
    blob = gzip.compress(payload(200_000))
    for cut in sorted({1, 2, 5, 10, 11, 100, len(blob) // 2, len(blob) - 8, len(blob) - 4,
                       len(blob) - 1}):
        with pytest.raises(CorruptStream):
            run(tmp_path, blob[:cut], GZ)


@pytest.mark.parametrize("offset", [-8, -4, 200], ids=["crc", "isize", "deflate-data"])
def test_gzip_corruption_fails(tmp_path: Path, offset: int) -> None:
    blob = bytearray(gzip.compress(payload(20_000)))
    blob[offset] ^= 0x55
    with pytest.raises(CorruptStream) as err:
        run(tmp_path, bytes(blob), GZ)
    assert str(err.value).startswith(f"layer {LAYER}: gzip stream is corrupt: ")


def test_zstd_frames_and_skippable_frames(tmp_path: Path) -> None:
    c = zstandard.ZstdCompressor(write_checksum=True)
    no_size = zstandard.ZstdCompressor(write_content_size=False, write_checksum=False)
    parts = [payload(3000, 1), payload(2 * CHUNK_BYTES + 3, 2), payload(10, 3)]
    blob = (skippable(b"seekable index") + c.compress(parts[0]) + skippable(b"", 7)
            + no_size.compress(parts[1]) + c.compress(parts[2]) + skippable(b"tail", 15))
    assert run(tmp_path, blob, ZST) == b"".join(parts)


def test_zstd_streamed_frame(tmp_path: Path) -> None:
    # A frame written by a streaming compressor (no content size, many blocks).
    data = payload(3 * CHUNK_BYTES)
    obj = zstandard.ZstdCompressor(level=1).compressobj()
    blob = b"".join(obj.compress(data[i:i + 4096]) for i in range(0, len(data), 4096))
    blob += obj.flush()
    assert run(tmp_path, blob, ZST) == data


def test_zstd_truncated_anywhere_fails(tmp_path: Path) -> None:
    c = zstandard.ZstdCompressor(write_checksum=True)
    blob = c.compress(payload(300_000)) + skippable(b"abcd")
    frame_end = len(blob) - 12
    for cut in sorted({1, 3, 4, 5, 6, 8, 20, frame_end // 2, frame_end - 4, frame_end - 1,
                       frame_end + 3, frame_end + 8, len(blob) - 1}):
        with pytest.raises(CorruptStream) as err:
            run(tmp_path, blob[:cut], ZST)
        assert "truncated" in str(err.value), cut


@pytest.mark.parametrize("trailing", [b"garbage!", b"\0" * 8, b"\x28\xb5\x2f\xfd\x08"],
                         ids=["garbage", "zeros", "reserved-bit"])
def test_zstd_trailing_bytes_are_refused(tmp_path: Path, trailing: bytes) -> None:
    blob = zstandard.ZstdCompressor().compress(payload(5000)) + trailing
    with pytest.raises(CorruptStream):
        run(tmp_path, blob, ZST)


def test_zstd_garbage_offset_is_reported(tmp_path: Path) -> None:
    frame = zstandard.ZstdCompressor().compress(payload(5000))
    with pytest.raises(CorruptStream) as err:
        run(tmp_path, frame + b"garbage!", ZST)
    assert str(err.value) == (f"layer {LAYER}: bytes at offset {len(frame)} are not a zstd"
                              " frame (they start '67617262')")


@pytest.mark.parametrize("kind", ["gzip", "zstd"])
def test_bomb_comes_out_in_bounded_chunks(tmp_path: Path, kind: str) -> None:
    size = 64 * CHUNK_BYTES
    zeros = bytes(size)
    blob = gzip.compress(zeros, 9) if kind == "gzip" else zstandard.ZstdCompressor(
        level=19).compress(zeros)
    assert len(blob) < size // 500
    path = tmp_path / "bomb"
    path.write_bytes(blob)
    total = 0
    for chunk in decompressed_chunks(path, GZ if kind == "gzip" else ZST, layer=LAYER):
        assert len(chunk) <= CHUNK_BYTES
        total += len(chunk)
    assert total == size


def test_isal_and_zlib_agree(tmp_path: Path) -> None:
    data = payload(500_000)
    blob = zlib.compressobj(6, zlib.DEFLATED, 31)
    gz = blob.compress(data) + blob.flush()
    assert hashlib.sha256(run(tmp_path, gz, GZ)).digest() == hashlib.sha256(data).digest()
