"""The remote-cache artifact: an ext4 image as an OCI 1.1 artifact of zstd chunks.

Shape (one image, one manifest)::

    manifest  artifactType ARTIFACT_TYPE
      config  CONFIG_MEDIA_TYPE: {"key": <hex>, "material": {...}, "size": N,
                                  "sha256": <hex of the whole ext4>,
                                  "record": {...} (optional: uuid, runtime, ...)}
      layers  CHUNK_MEDIA_TYPE, one per <= CHUNK_MAX_BYTES of the image, each
              annotated with its offset, uncompressed size and digest, and
              titled ``<name>.ext4.<index>.zst`` so ``oras pull`` writes files
              a shell can ``zstd -d`` and ``cat`` back together.

The config carries the key material so that a hit is checked against the key
computed locally (a tag can be moved by anyone with push rights); the
uncompressed digests let a reader verify what it writes, chunk by chunk, and
the whole-image sha256 is the final word before a byte lands in ``out/``.

Pushing: blobs first (each only if the registry lacks it: HEAD, mount), the
manifest last: the manifest PUT is the atomic publish, so a push killed
half-way leaves orphan blobs and no tag, which reads as a miss.

Memory: a chunk is compressed to a spool file while both digests are taken,
then uploaded from that file in pieces; nothing holds a chunk in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.base.digest import Digest
from pipeline.oci import mediatypes as mt

if TYPE_CHECKING:  # loaded by the push itself: the task graph needs only the constants
    from pipeline.registry.client import RegistryClient

__all__ = ["ARTIFACT_TYPE", "CONFIG_MEDIA_TYPE", "CHUNK_MEDIA_TYPE", "CHUNK_MAX_BYTES",
           "Chunk", "push_artifact", "ANN_OFFSET", "ANN_SIZE", "ANN_DIGEST", "ANN_TITLE"]

ARTIFACT_TYPE = "application/vnd.rootfs-pipeline.ext4.v1"
CONFIG_MEDIA_TYPE = "application/vnd.rootfs-pipeline.ext4.config.v1+json"
CHUNK_MEDIA_TYPE = "application/vnd.rootfs-pipeline.ext4.chunk.v1+zstd"
ANN_OFFSET = "org.rootfs-pipeline.chunk.offset"
ANN_SIZE = "org.rootfs-pipeline.chunk.size"
ANN_DIGEST = "org.rootfs-pipeline.chunk.digest"
ANN_TITLE = "org.opencontainers.image.title"
# The bound: big enough that a 10 GiB image is 40 blobs, small enough
# that one lost connection costs little and registries' per-blob limits hold.
CHUNK_MAX_BYTES = 256 << 20
# Read, compress and upload in pieces of this size: the memory per chunk.
IO_PIECE_BYTES = 1 << 20
# zstd level 3: the library default, ~300 MB/s per core; higher levels buy
# little on ext4 images (mostly already-compressed payloads and zeros).
ZSTD_LEVEL = 3


@dataclass(frozen=True, slots=True)
class Chunk:
    """One chunk of the image: where it goes and what it must hash to."""

    index: int
    offset: int
    size: int
    raw_digest: Digest
    digest: Digest
    compressed_size: int

    def descriptor(self, name: str) -> dict[str, Any]:
        return {"mediaType": CHUNK_MEDIA_TYPE, "digest": str(self.digest),
                "size": self.compressed_size,
                "annotations": {ANN_OFFSET: str(self.offset), ANN_SIZE: str(self.size),
                                ANN_DIGEST: str(self.raw_digest),
                                ANN_TITLE: f"{name}.ext4.{self.index:04d}.zst"}}


def _spool_chunk(src: Any, size: int, spool: Any,
                 checksum: bool) -> tuple[Digest, Digest, int, Any]:
    import zstandard

    raw = hashlib.sha256()
    spool.seek(0)
    spool.truncate()
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=checksum)
    with compressor.stream_writer(spool, size=size, closefd=False) as writer:
        left = size
        while left:
            piece = src.read(min(IO_PIECE_BYTES, left))
            if not piece:
                raise OSError(f"image shrank while being pushed ({left} bytes short)")
            raw.update(piece)
            writer.write(piece)
            left -= len(piece)
    spool.flush()
    compressed_size = spool.tell()
    spool.seek(0)
    packed = hashlib.sha256()
    while piece := spool.read(IO_PIECE_BYTES):
        packed.update(piece)
    return (Digest("sha256", raw.hexdigest()), Digest("sha256", packed.hexdigest()),
            compressed_size, raw)


def _pieces(path: str) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while piece := f.read(IO_PIECE_BYTES):
            yield piece


def push_artifact(client: RegistryClient, registry: str, repository: str, image: Path, *,
                  name: str, key: str, material: Mapping[str, Any], tags: list[str],
                  chunk_bytes: int = CHUNK_MAX_BYTES, mount_from: str | None = None,
                  record: Mapping[str, Any] | None = None, repair: bool = False) -> Digest:
    """Push ``image`` as an artifact, blobs first, then the manifest under each tag.

    ``record``: what a reader's build record should say beyond the bytes (the
    image's uuid, runtime config...), kept in the config beside the key material.

    ``repair``: the entry under these tags was found damaged. A registry keeps
    the first bytes stored under a digest (distribution skips the move when the
    blob exists) and a HEAD cannot tell a corrupted blob, so a repair writes
    every chunk as zstd frames with a content checksum: other bytes, other
    digests, uploaded afresh; the same image once decompressed.
    """
    from pipeline.registry.push import ensure_blob, put_manifest

    if not 0 < chunk_bytes <= CHUNK_MAX_BYTES:
        raise ValueError(f"internal error: chunk size {chunk_bytes} out of range")
    total = os.stat(image).st_size
    whole = hashlib.sha256()
    chunks: list[Chunk] = []
    with open(image, "rb") as src, tempfile.TemporaryDirectory(
            prefix=".push-", dir=image.parent) as spool_dir:
        spool_path = os.path.join(spool_dir, "chunk.zst")
        with open(spool_path, "w+b") as spool:
            offset = 0
            while offset < total or not chunks:
                size = min(chunk_bytes, total - offset)
                start = src.tell()
                raw, packed, packed_size, state = _spool_chunk(src, size, spool, repair)
                if offset == 0:
                    # The whole image's hash after its first chunk is that chunk's hash.
                    whole = state
                else:
                    # Later chunks: the whole-image hash reads them again (page cache).
                    src.seek(start)
                    left = size
                    while left:
                        piece = src.read(min(IO_PIECE_BYTES, left))
                        whole.update(piece)
                        left -= len(piece)
                chunk = Chunk(len(chunks), offset, size, raw, packed, packed_size)
                ensure_blob(client, registry, repository, packed, packed_size,
                            lambda: _pieces(spool_path), mount_from=mount_from)
                chunks.append(chunk)
                offset += size
    fields = {"key": key, "material": dict(material), "size": total, "sha256": whole.hexdigest()}
    if record:
        fields["record"] = dict(record)
    config = json.dumps(fields, sort_keys=True,
                        separators=(",", ":")).encode()
    config_digest = Digest("sha256", hashlib.sha256(config).hexdigest())
    ensure_blob(client, registry, repository, config_digest, len(config), lambda: [config])
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "artifactType": ARTIFACT_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": str(config_digest),
                   "size": len(config)},
        "layers": [c.descriptor(name) for c in chunks],
        "annotations": {"org.rootfs-pipeline.key": key},
    }, sort_keys=True, separators=(",", ":")).encode()
    digest = Digest("sha256", hashlib.sha256(manifest).hexdigest())
    for tag in tags:
        put_manifest(client, registry, repository, tag, mt.OCI_MANIFEST, manifest)
    return digest


def copy_artifact(client: RegistryClient, registry: str, repository: str, digest: Digest, *,
                  to_registry: str, to_repository: str, tag: str) -> Digest:
    """Publish an artifact already in ``registry/repository`` (by manifest digest) under
    ``to_registry/to_repository:tag``: the same manifest bytes, so the same digest, and
    every blob mounted (or, across registries, streamed through) instead of rebuilt."""
    from pipeline.base.digest import parse_digest
    from pipeline.base.jsontext import loads_bounded
    from pipeline.errors import BadDigest, RemoteArtifactError
    from pipeline.registry.push import ensure_blob, put_manifest

    body = client.get_manifest(registry, repository, digest).body  # verified: by digest
    try:
        manifest = loads_bounded(body)
        blobs = [(parse_digest(d["digest"]), int(d["size"]))
                 for d in [manifest["config"], *manifest["layers"]]]
    except (KeyError, TypeError, ValueError, BadDigest) as err:
        raise RemoteArtifactError(f"{registry}/{repository}@{digest}: not an artifact to "
                                  f"publish ({str(err)[:200]!r})") from None
    for blob, size in blobs:

        def pieces(blob: Digest = blob) -> Iterator[bytes]:
            with client.open_blob(registry, repository, blob) as stream:
                yield from stream.chunks()

        ensure_blob(client, to_registry, to_repository, blob, size, pieces,
                    mount_from=repository if to_registry == registry else None)
    return put_manifest(client, to_registry, to_repository, tag, mt.OCI_MANIFEST, body)
