"""Fetching an artifact (remote cache or published image) back into an ext4 file.

Every byte is verified before the file is renamed into place: the manifest
against its digest (client), the config against its descriptor and the key
computed locally, each chunk's compressed bytes against its digest, its
decompressed bytes against the annotated digest and size, and the whole image
against the config's sha256. Anything wrong is a RemoteArtifactError (the
caller treats it as a miss and builds locally) and the partial file is removed.

Chunks that decompress to zeros are not written: the output is created at its
full size with ``truncate`` and those ranges stay holes (sparse, like mkfs's).
Memory is bounded by the decompressor's window and IO_PIECE_BYTES: chunks
are decompressed through a reader, a piece at a time, never a network
piece's whole expansion at once.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from pipeline.base.digest import Digest, parse_digest
from pipeline.base.files import temp_path
from pipeline.base.jsontext import loads_bounded
from pipeline.base.writeback import Writeback
from pipeline.errors import BadDigest, RemoteArtifactError
from pipeline.registry.client import RegistryClient
from pipeline.remote.artifact import (
    ANN_DIGEST,
    ANN_OFFSET,
    ANN_SIZE,
    ARTIFACT_TYPE,
    CHUNK_MAX_BYTES,
    CHUNK_MEDIA_TYPE,
    CONFIG_MEDIA_TYPE,
    IO_PIECE_BYTES,
)

__all__ = ["Fetched", "Found", "fetch_artifact", "find_artifact", "CONFIG_MAX_BYTES",
           "IMAGE_MAX_BYTES"]

# The config is a key, its material (a few hundred bytes of options and tool
# versions), two numbers and the build record's extras (the runtime config:
# an image's env and labels can take some kilobytes; a record is at most 1 MiB).
CONFIG_MAX_BYTES = 1 << 20
# A rootfs larger than 1 TiB is not a microVM disk: refuse before truncate().
IMAGE_MAX_BYTES = 1 << 40


@dataclass(frozen=True, slots=True)
class Fetched:
    """What was written: the artifact's manifest digest, the image sha256 and size."""

    digest: Digest
    sha256: str
    size: int
    material: dict[str, Any]
    record: dict[str, Any] = field(default_factory=dict)
    """What the pusher's build record said beyond the bytes (uuid, runtime...): as
    trusted as the image itself, i.e. as whoever may push to the repository."""


@dataclass(frozen=True, slots=True)
class Found:
    """An artifact's manifest and config, read and checked, no chunk downloaded."""

    digest: Digest
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def sha256(self) -> str:
        return str(self.config["sha256"])

    @property
    def size(self) -> int:
        return int(self.config["size"])


def bad(where: str, what: str) -> RemoteArtifactError:
    return RemoteArtifactError(f"{where}: {what}; it is treated as a cache miss (push it again "
                               "from a good build, or delete the tag)")


def chunk_list(where: str, manifest: Any, size: int) -> list[tuple[Digest, int, int, int, Digest]]:
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise bad(where, "the manifest has no chunk list")
    out, expected_offset = [], 0
    for i, layer in enumerate(layers):
        try:
            ann = layer["annotations"]
            if layer["mediaType"] != CHUNK_MEDIA_TYPE:
                raise ValueError(f"media type {layer['mediaType']!r}")
            entry = (parse_digest(layer["digest"]), int(layer["size"]), int(ann[ANN_OFFSET]),
                     int(ann[ANN_SIZE]), parse_digest(ann[ANN_DIGEST]))
        except (KeyError, TypeError, ValueError, BadDigest) as err:
            raise bad(where, f"chunk {i} descriptor is malformed ({str(err)[:200]!r})") from None
        if entry[2] != expected_offset or not 0 <= entry[3] <= CHUNK_MAX_BYTES:
            raise bad(where, f"chunk {i} covers offset {entry[2]} size {entry[3]}, expected "
                             f"offset {expected_offset} and at most {CHUNK_MAX_BYTES} bytes")
        expected_offset += entry[3]
        out.append(entry)
    if expected_offset != size:
        raise bad(where, f"chunks cover {expected_offset} bytes, the config says {size}")
    return out


def _read_config(client: RegistryClient, registry: str, repository: str, where: str,
                 manifest: Any) -> dict[str, Any]:
    try:
        desc = manifest["config"]
        digest, size = parse_digest(desc["digest"]), int(desc["size"])
        if manifest.get("artifactType") != ARTIFACT_TYPE or desc["mediaType"] != CONFIG_MEDIA_TYPE:
            raise ValueError("not a rootfs-pipeline ext4 artifact")
    except (KeyError, TypeError, ValueError, BadDigest) as err:
        raise bad(where, f"the manifest is not ours ({str(err)[:200]!r})") from None
    if size > CONFIG_MAX_BYTES:
        raise bad(where, f"the config is {size} bytes, more than {CONFIG_MAX_BYTES}")
    body = b""
    with client.open_blob(registry, repository, digest) as stream:
        for piece in stream.chunks():
            body += piece
            if len(body) > size:
                break
    if len(body) != size or hashlib.sha256(body).hexdigest() != digest.hex:
        raise bad(where, f"the config blob does not match its descriptor {digest}")
    try:
        config = loads_bounded(body)
        if (not isinstance(config, dict) or not isinstance(config.get("key"), str)
                or not isinstance(config.get("size"), int)
                or not isinstance(config.get("sha256"), str)
                or not isinstance(config.get("material"), dict)):
            raise ValueError("missing key, size, sha256 or material")
    except ValueError as err:
        raise bad(where, f"the config is malformed ({str(err)[:200]!r})") from None
    if not 0 <= config["size"] <= IMAGE_MAX_BYTES:
        raise bad(where, f"the config claims {config['size']} bytes")
    if not isinstance(config.get("record", {}), dict):
        raise bad(where, "the config's record is not an object")
    return config


def find_artifact(client: RegistryClient, registry: str, repository: str, reference: str, *,
                  key: str | None = None,
                  material: Mapping[str, Any] | None = None) -> Found:
    """The artifact's manifest and config, checked against ``key`` and ``material``."""
    where = f"{registry}/{repository}:{reference}"
    response = client.get_manifest(registry, repository, reference)
    try:
        manifest = loads_bounded(response.body)
        if not isinstance(manifest, dict):
            raise ValueError("not an object")
    except ValueError as err:
        raise bad(where, f"the manifest is not JSON ({str(err)[:200]!r})") from None
    config = _read_config(client, registry, repository, where, manifest)
    if key is not None and config["key"] != key:
        raise bad(where, f"the config is for key {config['key'][:80]!r}, expected {key!r}")
    if material is not None and config["material"] != dict(material):
        raise bad(where, f"the config's key material differs from this build's (key {key!r})")
    return Found(response.digest, manifest, config)


def fetch_artifact(client: RegistryClient, registry: str, repository: str, reference: str,
                   out: Path, *, key: str | None = None,
                   material: Mapping[str, Any] | None = None) -> Fetched:
    """Download, verify and write the artifact at ``reference`` to ``out`` (atomically)."""
    where = f"{registry}/{repository}:{reference}"
    found = find_artifact(client, registry, repository, reference, key=key, material=material)
    manifest, config = found.manifest, found.config
    size = config["size"]
    chunks = chunk_list(where, manifest, size)
    tmp = temp_path(out)
    whole = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            f.truncate(size)
            writeback = Writeback(f.fileno())
            for digest, packed_size, offset, raw_size, raw_digest in chunks:
                fetch_chunk(client, registry, repository, where, f, whole, digest,
                             packed_size, offset, raw_size, raw_digest, writeback)
            f.flush()
            os.fsync(f.fileno())
        fetched = verified(where, found, whole)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return fetched


def verified(where: str, found: Found, whole: Any) -> Fetched:
    """What was fetched of ``found``, once ``whole`` (the sha256 over every written byte)
    matches the image's hash in its config."""
    config = found.config
    if whole.hexdigest() != config["sha256"]:
        raise bad(where, f"the image hashes to sha256:{whole.hexdigest()}, the config says "
                         f"sha256:{str(config['sha256'])[:80]}")
    return Fetched(found.digest, config["sha256"], config["size"], config["material"],
                   dict(config.get("record") or {}))


class _Packed:
    """A chunk's compressed bytes as a file for the decompressor: hashed, counted, bounded."""

    def __init__(self, pieces: Iterator[bytes], limit: int, where: str, digest: Digest) -> None:
        self._pieces, self._limit, self._where, self._digest = pieces, limit, where, digest
        self._buffer = b""
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        while not self._buffer:
            piece = next(self._pieces, None)
            if piece is None:
                return b""
            self.count += len(piece)
            if self.count > self._limit:
                raise bad(self._where, f"chunk {self._digest} is longer than its "
                                       f"{self._limit} bytes")
            self.hash.update(piece)
            self._buffer = piece
        if size < 0 or size >= len(self._buffer):
            out, self._buffer = self._buffer, b""
        else:
            out, self._buffer = self._buffer[:size], self._buffer[size:]
        return out

    def drain(self) -> None:
        while self.read():
            pass


# Compared against each full decompressed piece (a memcmp): all zeros stays a hole.
_ZEROS = bytes(IO_PIECE_BYTES)


def _zeros(data: bytes) -> bool:
    return data == _ZEROS if len(data) == IO_PIECE_BYTES else data.count(0) == len(data)


def fetch_chunk(client: RegistryClient, registry: str, repository: str, where: str, f: Any,
                 whole: Any, digest: Digest, packed_size: int, offset: int, raw_size: int,
                 raw_digest: Digest, writeback: Writeback | None = None) -> None:
    # The first chunk's digest is the whole image's hash state after it: one pass, not two.
    raw = hashlib.sha256() if offset else None
    got_raw = 0
    f.seek(offset)
    try:
        with client.open_blob(registry, repository, digest) as stream:
            packed = _Packed(iter(stream.chunks()), packed_size, where, digest)
            # Decompressed in pieces of at most IO_PIECE_BYTES: a megabyte of zstd can
            # stand for hundreds of megabytes of zeros.
            reader = zstandard.ZstdDecompressor().stream_reader(
                cast("IO[bytes]", packed), read_size=IO_PIECE_BYTES, closefd=False)
            while data := reader.read(IO_PIECE_BYTES):
                got_raw += len(data)
                if got_raw > raw_size:
                    raise bad(where, f"chunk {digest} decompresses past its {raw_size} bytes")
                if raw is not None:
                    raw.update(data)
                whole.update(data)
                if _zeros(data):
                    f.seek(len(data), os.SEEK_CUR)  # a hole: truncate() made it zeros
                else:
                    f.write(data)
                    if writeback is not None:
                        f.flush()
                        writeback.written(f.tell())
            packed.drain()
    except zstandard.ZstdError as err:
        raise bad(where, f"chunk {digest} is not valid zstd ({err})") from None
    if packed.hash.hexdigest() != digest.hex:
        raise bad(where, f"chunk at offset {offset} hashes to "
                         f"sha256:{packed.hash.hexdigest()}, expected {digest}")
    got = (whole.copy() if raw is None else raw).hexdigest()
    if got_raw != raw_size or got != raw_digest.hex:
        raise bad(where, f"chunk at offset {offset} decompresses to {got_raw} bytes "
                         f"sha256:{got}, expected {raw_size} bytes {raw_digest}")
