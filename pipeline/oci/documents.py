"""Manifests, indexes and image configs, parsed strictly from bytes (no I/O).

Covers the OCI image-spec (manifest.md, image-index.md, descriptor.md,
config.md) and Docker's Image Manifest V2 Schema 2 with its manifest list.

Refuses, with a message saying why:
- documents over ``MANIFEST_MAX_BYTES`` / ``CONFIG_MAX_BYTES``, JSON that is
  not an object, or an object with duplicate keys (two parsers could read two
  different documents from the same bytes);
- a ``mediaType`` field that disagrees with the Content-Type, and a document
  that has both ``manifests`` and ``config``/``layers`` (the "media type
  confusion" fixed in image-spec 1.0.2, GHSA-77vh-xpmg-72qh: the same bytes
  must not read as an index to one client and an image to another);
- Docker schema 1 manifests (deprecated, unverifiable layer order);
- artifacts that are not container images (``artifactType`` or a config media
  type other than an image config).

Attestation manifests in an index (platform ``unknown/unknown`` or annotation
``vnd.docker.reference.type: attestation-manifest``) are never selected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.base.digest import Digest, parse_digest
from pipeline.errors import BadDigest, BadImage, PlatformNotFound
from pipeline.oci import mediatypes as mt
from pipeline.oci.platform import Platform, best_match

__all__ = [
    "MANIFEST_MAX_BYTES", "CONFIG_MAX_BYTES", "Descriptor", "ImageManifest", "ImageIndex",
    "ImageConfig",
    "parse_descriptor", "parse_manifest_document", "parse_image_config", "is_attestation",
    "select_manifest", "offered_platforms",
]

# The OCI distribution spec requires registries to accept manifests of at least
# 4 MiB and containerd refuses larger ones; past that a "manifest" is an
# attempt to exhaust memory, not an image.
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
# Image configs carry history and environment but no file data; 8 MiB is far
# beyond any real one and still cheap to hold in memory.
CONFIG_MAX_BYTES = 8 * 1024 * 1024
# Sizes are int64 in every registry implementation.
_SIZE_MAX = 2**63 - 1

ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_KIND = "attestation-manifest"
_UNKNOWN = Platform("unknown", "unknown")
# RFC 6838 section 4.2 restricted names, as descriptor.md requires.
_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed pointer to content: media type, digest, size (descriptor.md)."""

    media_type: str
    digest: Digest
    size: int
    platform: Platform | None = None
    annotations: tuple[tuple[str, str], ...] = ()
    urls: tuple[str, ...] = ()
    artifact_type: str | None = None

    def annotation(self, key: str) -> str | None:
        return dict(self.annotations).get(key)


@dataclass(frozen=True, slots=True)
class ImageManifest:
    """An image manifest: one config and the layers, base first."""

    media_type: str
    config: Descriptor
    layers: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageIndex:
    """An image index or Docker manifest list."""

    media_type: str
    manifests: tuple[Descriptor, ...]


@dataclass(frozen=True, slots=True)
class ImageConfig:
    """What we need of an image config: its platform and the uncompressed layer digests."""

    platform: Platform
    diff_ids: tuple[Digest, ...]


def _load_object(body: bytes, *, where: str, what: str, limit: int) -> dict[str, Any]:
    if len(body) > limit:
        raise BadImage(f"{where}: {what} is {len(body)} bytes, more than the {limit} byte limit")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise BadImage(f"{where}: {what} has the key {key!r} twice; refusing an"
                               " ambiguous document")
            result[key] = value
        return result

    try:
        doc = json.loads(body.decode("utf-8"), object_pairs_hook=no_duplicates)
    except ValueError as err:  # UnicodeDecodeError and JSONDecodeError alike
        raise BadImage(f"{where}: {what} is not valid UTF-8 JSON ({err})") from None
    if not isinstance(doc, dict):
        raise BadImage(f"{where}: {what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _string(obj: Mapping[str, Any], key: str, *, where: str, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise BadImage(f"{where}: {key!r} must be a non-empty string, got {value!r:.80}")
    return value


def parse_descriptor(obj: Any, *, where: str) -> Descriptor:
    """Validate one descriptor object; every field is type-checked."""
    if not isinstance(obj, dict):
        raise BadImage(f"{where}: a descriptor must be a JSON object, got {type(obj).__name__}")
    media_type = _string(obj, "mediaType", where=where)
    assert media_type is not None
    if not _MEDIA_TYPE.fullmatch(media_type):
        raise BadImage(f"{where}: invalid mediaType {media_type!r:.100}")
    try:
        digest = parse_digest(obj.get("digest"))  # type: ignore[arg-type]
    except BadDigest as err:
        raise BadImage(f"{where}: {err}") from None
    size = obj.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= _SIZE_MAX:
        raise BadImage(f"{where}: descriptor {digest} has size {size!r:.40}; expected a"
                       " non-negative integer")
    platform = None
    if obj.get("platform") is not None:
        raw = obj["platform"]
        if not isinstance(raw, dict):
            raise BadImage(f"{where}: descriptor {digest} platform must be an object")
        os_ = _string(raw, "os", where=where)
        arch = _string(raw, "architecture", where=where)
        variant = _string(raw, "variant", where=where, required=False) or ""
        assert os_ is not None and arch is not None
        platform = Platform.of(os_, arch, variant)
    annotations = obj.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()):
        raise BadImage(f"{where}: descriptor {digest} annotations must map strings to strings")
    urls = obj.get("urls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise BadImage(f"{where}: descriptor {digest} urls must be a list of strings")
    artifact_type = _string(obj, "artifactType", where=where, required=False)
    return Descriptor(media_type, digest, size, platform,
                      tuple(sorted(annotations.items())), tuple(urls), artifact_type)


def _schema1(where: str) -> BadImage:
    return BadImage(
        f"{where}: is a Docker schema 1 manifest, which is deprecated and not supported;"
        " ask the publisher for an OCI or Docker schema 2 image, or convert it with"
        " `skopeo copy --format v2s2`")


def parse_manifest_document(body: bytes, content_type: str | None, *,
                            where: str) -> ImageManifest | ImageIndex:
    """Parse a manifest or an index; the Content-Type and the mediaType field must agree."""
    header = mt.base_type(content_type)
    if header in mt.SCHEMA1_TYPES:
        raise _schema1(where)
    if header not in mt.MANIFEST_TYPES and header not in mt.GENERIC_CONTENT_TYPES:
        raise BadImage(f"{where}: the registry sent Content-Type {header!r}, which is not a"
                       " manifest or index type; is this an image?")
    doc = _load_object(body, where=where, what="manifest", limit=MANIFEST_MAX_BYTES)
    version = doc.get("schemaVersion")
    if version == 1 and not isinstance(version, bool):
        raise _schema1(where)
    if version != 2 or isinstance(version, bool):
        raise BadImage(f"{where}: schemaVersion is {version!r:.20}, expected 2")
    field = _string(doc, "mediaType", where=where, required=False)
    if field in mt.SCHEMA1_TYPES:
        raise _schema1(where)
    specific = header if header in mt.MANIFEST_TYPES else None
    if field is not None and specific is not None and field != specific:
        # image-spec manifest.md / image-index.md: the mediaType property and
        # the Content-Type it was served with must not disagree.
        raise BadImage(f"{where}: Content-Type is {specific!r} but the mediaType field says"
                       f" {field!r}; refusing an ambiguous manifest")
    kind = field or specific
    if kind is None:
        raise BadImage(f"{where}: neither Content-Type ({header or 'missing'}) nor a mediaType"
                       " field says whether this is a manifest or an index")
    if kind not in mt.MANIFEST_TYPES:
        raise BadImage(f"{where}: mediaType {kind!r:.100} is not an image manifest or index")
    if "manifests" in doc and ("config" in doc or "layers" in doc):
        raise BadImage(f"{where}: has both 'manifests' and 'config'/'layers'; refusing a"
                       " document that reads as both an index and a manifest")
    if kind in mt.INDEX_TYPES:
        entries = doc.get("manifests")
        if not isinstance(entries, list):
            raise BadImage(f"{where}: an index needs a 'manifests' list")
        return ImageIndex(kind, tuple(parse_descriptor(e, where=where) for e in entries))
    return _parse_image_manifest(doc, kind, where=where)


def _parse_image_manifest(doc: dict[str, Any], kind: str, *, where: str) -> ImageManifest:
    if "config" not in doc or not isinstance(doc.get("layers"), list):
        raise BadImage(f"{where}: an image manifest needs 'config' and a 'layers' list")
    config = parse_descriptor(doc["config"], where=where)
    artifact_type = doc.get("artifactType")
    if artifact_type is not None or config.media_type not in mt.CONFIG_TYPES:
        what = (f"artifactType {artifact_type!r:.100}" if artifact_type is not None
                else f"config media type {config.media_type!r}")
        raise BadImage(f"{where}: is an OCI artifact ({what}), not a container image;"
                       " point the reference at an image")
    layers = tuple(parse_descriptor(layer, where=where) for layer in doc["layers"])
    return ImageManifest(kind, config, layers)


def parse_image_config(body: bytes, *, where: str) -> ImageConfig:
    """Parse an image config (config.md): os, architecture, variant and rootfs.diff_ids."""
    doc = _load_object(body, where=where, what="image config", limit=CONFIG_MAX_BYTES)
    os_ = _string(doc, "os", where=where)
    arch = _string(doc, "architecture", where=where)
    variant = _string(doc, "variant", where=where, required=False) or ""
    assert os_ is not None and arch is not None
    rootfs = doc.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise BadImage(f"{where}: image config needs rootfs.type 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise BadImage(f"{where}: image config needs a rootfs.diff_ids list")
    try:
        parsed = tuple(parse_digest(d) for d in diff_ids)
    except BadDigest as err:
        raise BadImage(f"{where}: rootfs.diff_ids: {err}") from None
    return ImageConfig(Platform.of(os_, arch, variant), parsed)


def is_attestation(desc: Descriptor) -> bool:
    """Build attestations (SBOM, provenance) are index entries but not images."""
    return desc.platform == _UNKNOWN or desc.annotation(ATTESTATION_ANNOTATION) == ATTESTATION_KIND


def _is_image_entry(desc: Descriptor) -> bool:
    return (desc.media_type in mt.IMAGE_MANIFEST_TYPES and desc.artifact_type is None
            and not is_attestation(desc))


def offered_platforms(index: ImageIndex) -> list[str]:
    """The platforms an index offers images for, sorted, attestations left out."""
    offered = {str(d.platform) if d.platform else "unspecified"
               for d in index.manifests if _is_image_entry(d)}
    return sorted(offered)


def select_manifest(index: ImageIndex, wanted: Platform, *, where: str) -> Descriptor:
    """The index entry to pull for ``wanted``; raise PlatformNotFound listing the offer."""
    candidates = [d for d in index.manifests if _is_image_entry(d)]
    chosen = best_match(wanted, [d.platform for d in candidates])
    if chosen is None:
        raise PlatformNotFound(where, str(wanted), offered_platforms(index))
    return candidates[chosen]
