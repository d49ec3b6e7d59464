"""Layer blobs for the bench world: written streaming to disk, pushed streaming.

The test harness builds layers in memory (``tests.harness.layers.make_layer``
keeps the compressed bytes in ``Layer.data``), which is right for tests and
wrong for a 1 GiB image. Here the harness's own tar writer
(``tests.harness.tarball.write_tar``) feeds a gzip compressor whose output
goes straight to a file, hashing both streams on the way; large regular
files are spliced into the tar in 1 MiB pieces with ``raw_bytes`` members.
Peak memory stays at a few MiB per layer whatever its size.

Uploads use the registry's own API (distribution spec, "Pushing blobs"):
a blob already in another repository is mounted (``?mount=&from=``) instead
of uploaded again; otherwise one ``PUT`` streams the file. Nothing the
registry answers is assumed: every status is checked.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from tests.harness.layers import DOCKER_LAYER_TYPES, GZIP_LEVEL, OCI_LAYER_TYPES, Layer
from tests.harness.tarball import BLOCK, MTIME, Member, raw_bytes, write_tar

from .content import Content

__all__ = ["LayerBlob", "write_layer", "big_file", "push_layer", "UPLOAD_CHUNK"]

# Read size for hashing and uploading blob files.
UPLOAD_CHUNK = 1 << 20
# Pushing 400 MB over loopback takes seconds; a minute means the registry hung.
PUSH_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class LayerBlob:
    """A gzip layer blob on disk and what a manifest and config say about it."""

    name: str
    """What the bench calls it (``base``, ``top-app03-v1``...): for logs and JSON."""
    digest: str
    size: int
    diff_id: str
    uncompressed_size: int
    entries: int

    @property
    def file_name(self) -> str:
        return self.digest.split(":", 1)[1]

    def harness_layer(self) -> Layer:
        """A harness ``Layer`` without its bytes: enough for ``make_image``."""
        return Layer(b"", self.digest, self.size, self.diff_id, "gzip",
                     OCI_LAYER_TYPES["gzip"], DOCKER_LAYER_TYPES["gzip"],
                     self.uncompressed_size)

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, object]) -> LayerBlob:
        return cls(**d)  # type: ignore[arg-type]


def big_file(path: str, content: Content, kind: str, size: int, *,
             mode: int = 0o644) -> Iterator[Member]:
    """A regular file of ``size`` bytes as tar members that never hold it whole.

    The header comes from ``tarfile`` (PAX format, as the harness writes
    members), the data follows in STREAM_CHUNK pieces, then the padding to
    a 512-byte block (POSIX ustar).
    """
    info = tarfile.TarInfo(path)
    info.size, info.mode, info.mtime = size, mode, MTIME
    yield raw_bytes(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    for piece in content.stream(kind, size):
        yield raw_bytes(piece)
    yield raw_bytes(b"\0" * (-size % BLOCK))


def write_layer(members: Iterable[Member], blobs_dir: Path, name: str) -> LayerBlob:
    """Write ``members`` as a gzip tar blob to ``blobs_dir/<hex>``; return its descriptor."""
    blobs_dir.mkdir(parents=True, exist_ok=True)
    tmp = blobs_dir / f".{name}.{os.getpid()}.tmp"
    diff = hashlib.sha256()
    blob = hashlib.sha256()
    raw_size = size = entries = 0
    # wbits 31: a gzip wrapper with mtime 0 and no name, as the harness writes.
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)

    def counted(stream: Iterable[Member]) -> Iterator[Member]:
        nonlocal entries
        for member in stream:
            # Spliced pieces count only when they start with a tar header
            # (ustar magic at offset 257, POSIX pax "ustar Header Block").
            if member.kind != "bytes" or member.data[257:262] == b"ustar":
                entries += 1
            yield member

    with open(tmp, "wb") as out:
        for chunk in write_tar(counted(members)):
            diff.update(chunk)
            raw_size += len(chunk)
            packed = compressor.compress(chunk)
            if packed:
                blob.update(packed)
                size += len(packed)
                out.write(packed)
        packed = compressor.flush()
        blob.update(packed)
        size += len(packed)
        out.write(packed)
    digest = "sha256:" + blob.hexdigest()
    tmp.rename(blobs_dir / blob.hexdigest())
    return LayerBlob(name=name, digest=digest, size=size, diff_id="sha256:" + diff.hexdigest(),
                     uncompressed_size=raw_size, entries=entries)


def _check(r: httpx.Response, want: int, what: str) -> None:
    if r.status_code != want:
        raise RuntimeError(f"bench push: {what}: {r.request.method} {r.request.url} answered "
                           f"{r.status_code}, expected {want}: {r.text[:300]}")


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(UPLOAD_CHUNK):
            yield chunk


def push_layer(client: httpx.Client, repository: str, layer: LayerBlob, blobs_dir: Path, *,
               mount_from: str | None = None) -> None:
    """Make ``layer`` present in ``repository``: already there, mounted, or uploaded."""
    head = client.head(f"/v2/{repository}/blobs/{layer.digest}")
    if head.status_code == 200:
        return
    params = {"mount": layer.digest, "from": mount_from} if mount_from else None
    r = client.post(f"/v2/{repository}/blobs/uploads/", params=params)
    if r.status_code == 201:
        return
    _check(r, 202, f"start upload of {layer.name}")
    location = httpx.URL(str(client.base_url)).join(r.headers["location"])
    r = client.put(location.copy_merge_params({"digest": layer.digest}),
                   content=_chunks(blobs_dir / layer.file_name),
                   headers={"Content-Type": "application/octet-stream",
                            "Content-Length": str(layer.size)},
                   timeout=PUSH_TIMEOUT_S)
    _check(r, 201, f"finish upload of {layer.name}")
