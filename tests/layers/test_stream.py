"""pipeline.layers.stream: exact reads, hashing, limits and the background decompressor."""

from __future__ import annotations

import gzip
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.base.digest import VerifyingHasher, digest_of
from pipeline.errors import CorruptStream, DigestMismatch, LayerError, LimitExceeded
from pipeline.layers.compression import CHUNK_BYTES, decompressed_chunks
from pipeline.layers.stream import LayerStream

GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
LAYER = "sha256:" + "ab" * 32


def payload(n: int, seed: int = 1) -> bytes:
    """Half random, half repetitive: compresses, but not to nothing."""
    rng = random.Random(seed)
    return b"".join(rng.randbytes(64) + b"x" * 64 for _ in range(n // 128 + 1))[:n]


def stream_over(chunks: list[bytes], limit: int = 1 << 40) -> tuple[LayerStream, VerifyingHasher]:
    data = b"".join(chunks)
    hasher = VerifyingHasher(digest_of(data), what="test stream")
    return LayerStream(iter(chunks), hasher, limit=limit, layer=LAYER), hasher


def test_layer_stream_reads_across_chunks(tmp_path: Path) -> None:
    chunks = [b"abc", b"", b"defgh", b"i", b"jklmnopqrstuvwxyz"]
    stream, hasher = stream_over(chunks)
    assert stream.read(2) == b"ab"
    assert stream.read(5) == b"cdefg"
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    try:
        assert stream.copy_to(fd, 4) == 4
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"hijk"
    assert stream.skip(3) == 3
    assert stream.read(100) == b"opqrstuvwxyz"
    assert stream.read(1) == b""
    assert stream.skip(5) == 0
    stream.drain()
    hasher.verify()


def test_layer_stream_hashes_what_it_never_parsed() -> None:
    stream, hasher = stream_over([b"head", b"trailing bytes after the archive"])
    assert stream.read(4) == b"head"
    stream.drain()
    hasher.verify()
    assert hasher.count == 36


def test_layer_stream_detects_wrong_diff_id() -> None:
    hasher = VerifyingHasher(digest_of(b"other"), what="layer x uncompressed (diff_id)")
    stream = LayerStream(iter([b"data"]), hasher, limit=100, layer=LAYER)
    stream.drain()
    with pytest.raises(DigestMismatch) as err:
        hasher.verify()
    assert str(err.value) == (f"layer x uncompressed (diff_id): expected {digest_of(b'other')},"
                              f" got {digest_of(b'data')}")


def test_layer_stream_limit() -> None:
    stream, _ = stream_over([b"x" * 60, b"y" * 60], limit=100)
    assert stream.read(50) == b"x" * 50
    with pytest.raises(LimitExceeded) as err:
        stream.read(20)
    assert isinstance(err.value, LayerError)
    assert str(err.value) == (f"layer {LAYER}: uncompressed stream passes 100 bytes"
                              " (unpack.Limits.max_stream_bytes); a decompression bomb, or"
                              " raise the limit for this image")


def test_background_stream_matches_foreground(tmp_path: Path) -> None:
    data = payload(5 * CHUNK_BYTES + 17)
    path = tmp_path / "blob"
    path.write_bytes(gzip.compress(data))
    hasher = VerifyingHasher(digest_of(data), what="bg")
    with LayerStream(decompressed_chunks(path, GZ, layer=LAYER), hasher, limit=1 << 40,
                     layer=LAYER, background=True) as stream:
        assert stream.read(10) == data[:10]
        assert stream.skip(CHUNK_BYTES) == CHUNK_BYTES
        rest = stream.read(len(data))
        assert rest == data[10 + CHUNK_BYTES:]
        stream.drain()
    hasher.verify()


def test_background_stream_forwards_errors(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(gzip.compress(payload(3 * CHUNK_BYTES))[:-100])
    hasher = VerifyingHasher(digest_of(b""), what="bg")
    with LayerStream(decompressed_chunks(path, GZ, layer=LAYER), hasher, limit=1 << 40,
                     layer=LAYER, background=True) as stream:
        with pytest.raises(CorruptStream):
            stream.drain()
        with pytest.raises(CorruptStream):  # and keeps failing
            stream.read(1)


def test_background_stream_stops_when_the_reader_gives_up(tmp_path: Path) -> None:
    # A bomb the reader abandons after one read: close() must stop the producer
    # (blocked on a full queue) instead of decompressing the rest.
    path = tmp_path / "blob"
    path.write_bytes(gzip.compress(bytes(256 * CHUNK_BYTES), 9))
    consumed: list[int] = []

    def counting() -> Iterator[bytes]:
        for chunk in decompressed_chunks(path, GZ, layer=LAYER):
            consumed.append(len(chunk))
            yield chunk

    hasher = VerifyingHasher(digest_of(b""), what="bg")
    stream = LayerStream(counting(), hasher, limit=1 << 40, layer=LAYER, background=True)
    assert stream.read(512) == bytes(512)
    stream.close()
    assert len(consumed) < 32
    assert not [t for t in threading.enumerate() if t.name == "layer-decompress"]
    with pytest.raises(AssertionError, match="internal error: LayerStream read after close"):
        stream.read(1 << 20)
