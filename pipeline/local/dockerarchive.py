"""Classic ``docker save`` archives: ``manifest.json`` naming a config and layer tars.

The format (moby image/tarexport): ``manifest.json`` is a list of
``{"Config": <name>, "RepoTags": [...], "Layers": [<name>, ...]}``; the
names are files in the archive (``<id>/layer.tar`` before Docker 25,
``blobs/sha256/<hex>`` since, ``<hex>.tar`` from skopeo). There is no
image manifest, so one is made here: a Docker schema 2 manifest whose
layer digests are the sha256 of each layer file as stored (plain tar, or
gzip/zstd as sniffed from its first bytes), exactly what a registry push of
the same files would name them.

What it refuses to trust: ``manifest.json`` (size cap, shape, every name
normalised and required to be a regular file of the archive, never a link),
the config (cap, digest computed here), and each layer: a plain-tar layer
whose sha256 is not its ``diff_id`` is refused at once; a compressed one is
checked against its ``diff_id`` when it is unpacked. Foreign layers
(``LayerSources``) are refused like a registry's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.base.digest import Digest, digest_of
from pipeline.errors import BadImage, BadReference, DigestMismatch, LocalSourceError
from pipeline.local.files import SourceFiles
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import CONFIG_MAX_BYTES, MANIFEST_MAX_BYTES, Descriptor, ImageManifest
from pipeline.oci.reference import parse_reference

__all__ = ["MANIFEST_FILE", "ArchiveEntry", "select_entry", "read_config", "layer_descriptor",
           "identity_of", "synthesize"]

MANIFEST_FILE = "manifest.json"
_HASH_BYTES = 1 << 20
_MAGIC = ((b"\x1f\x8b", mt.DOCKER_LAYER_GZIP), (b"\x28\xb5\x2f\xfd", mt.DOCKER_LAYER_ZSTD))


@dataclass(frozen=True, slots=True)
class ArchiveEntry:
    """One image of ``manifest.json``: its config and layer file names."""

    config: str
    layers: tuple[str, ...]
    tags: tuple[str, ...]


def _names(value: Any, what: str, *, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise LocalSourceError(f"{where}: {MANIFEST_FILE} {what} must be a list of strings")
    return value


def _entry(raw: Any, *, where: str) -> ArchiveEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("Config"), str):
        raise LocalSourceError(f"{where}: each {MANIFEST_FILE} entry needs a string 'Config'")
    if raw.get("LayerSources"):
        raise BadImage(f"{where}: the image has foreign layers (LayerSources) whose bytes are "
                       "not in the archive; such images cannot become a root filesystem")
    tags = []
    for text in _names(raw.get("RepoTags") or [], "RepoTags", where=where):
        try:
            ref = parse_reference(text)
        except BadReference:
            continue  # a tag we cannot parse cannot be asked for either
        tags.append(f"{ref.name}:{ref.tag}")
    return ArchiveEntry(raw["Config"], tuple(_names(raw.get("Layers"), "Layers", where=where)),
                        tuple(tags))


def select_entry(files: SourceFiles, tag: str | None, *, where: str) -> ArchiveEntry:
    raw = files.read(MANIFEST_FILE, MANIFEST_MAX_BYTES, where=where)
    try:
        doc = json.loads(raw.decode("utf-8"))
    except ValueError:
        raise LocalSourceError(f"{where}: {MANIFEST_FILE} is not UTF-8 JSON") from None
    if not isinstance(doc, list) or not doc:
        raise LocalSourceError(f"{where}: {MANIFEST_FILE} must be a non-empty list")
    entries = [_entry(item, where=where) for item in doc]
    known = sorted({t for e in entries for t in e.tags})
    if tag is None:
        if len(entries) == 1:
            return entries[0]
        raise LocalSourceError(f"{where} holds {len(entries)} images; name one with :<name:tag> "
                               f"(tags: {', '.join(repr(t) for t in known) or 'none'})")
    matching = [e for e in entries if tag in e.tags]
    if len(matching) != 1:
        problem = "names several images" if matching else "is not in the archive"
        raise LocalSourceError(f"{where}: the tag {tag!r} {problem} (tags: "
                               f"{', '.join(repr(t) for t in known) or 'none'})")
    return matching[0]


def read_config(files: SourceFiles, entry: ArchiveEntry, *,
                where: str) -> tuple[Descriptor, bytes]:
    raw = files.read(entry.config, CONFIG_MAX_BYTES, where=where)
    return Descriptor(mt.DOCKER_CONFIG, digest_of(raw), len(raw)), raw


def layer_descriptor(files: SourceFiles, name: str, diff_id: Digest, *,
                     where: str) -> Descriptor:
    """The layer file ``name`` as a descriptor: its sha256, size and sniffed compression."""
    hasher = diff_id.hasher()
    size = 0
    media_type = mt.DOCKER_LAYER
    with files.open(name, where=where) as f:
        while chunk := f.read(_HASH_BYTES):
            if size == 0:
                media_type = next((t for magic, t in _MAGIC if chunk.startswith(magic)),
                                  mt.DOCKER_LAYER)
            hasher.update(chunk)
            size += len(chunk)
    digest = Digest(diff_id.algorithm, hasher.hexdigest())
    if media_type == mt.DOCKER_LAYER and digest != diff_id:
        raise DigestMismatch(f"{where}: layer {name!r} (a plain tar) against its config "
                             "diff_id", str(diff_id), str(digest))
    return Descriptor(media_type, digest, size)


def identity_of(config: Descriptor, entry: ArchiveEntry, sizes: list[int]) -> Digest:
    """What changes when the archive holds another image: config digest, layer names, sizes."""
    canonical = json.dumps({"config": str(config.digest), "layers": list(entry.layers),
                            "sizes": sizes}, sort_keys=True, separators=(",", ":"))
    return digest_of(canonical.encode("ascii"))


def synthesize(config: Descriptor, layers: list[Descriptor]) -> tuple[ImageManifest, Digest]:
    """The Docker schema 2 manifest of these blobs, and its digest."""
    def desc(d: Descriptor) -> dict[str, Any]:
        return {"mediaType": d.media_type, "size": d.size, "digest": str(d.digest)}

    body = json.dumps({"schemaVersion": 2, "mediaType": mt.DOCKER_MANIFEST,
                       "config": desc(config), "layers": [desc(d) for d in layers]},
                      sort_keys=True, separators=(",", ":")).encode("ascii")
    return ImageManifest(mt.DOCKER_MANIFEST, config, tuple(layers)), digest_of(body)
