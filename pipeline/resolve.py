"""Resolve an image reference to exactly what will be pulled: the lock entry.

``resolve_image`` walks reference -> (index ->) platform manifest -> config
and returns a ``ResolvedImage``: every digest, size and media type needed to
fetch and verify the layers later, and the diff_ids to check them against
after decompression.

What it refuses to trust: every manifest is checked against the digest that
named it (the client does that), the platform manifest against the index
descriptor's size and media type, the config against its descriptor through
the verifying blob cache. It refuses images whose layer count and diff_id
count differ, layers that live outside the registry (foreign /
non-distributable), and layer media types it cannot unpack.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from . import mediatypes as mt
from .blobcache import BlobCache
from .digest import Digest, parse_digest
from .errors import (BadDigest, BadImage, BadReference, DigestMismatch, LockError,
                     BadPlatform, PlatformNotFound)
from .oci import (CONFIG_MAX_BYTES, Descriptor, Index, Manifest, parse_image_config,
                  parse_manifest_document, select_manifest)
from .platform import Platform, parse_platform
from .reference import ImageRef, parse_reference
from .registry import RegistryClient

__all__ = ["BlobRef", "LayerRef", "ResolvedImage", "resolve_image", "head_digest"]

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A blob to fetch: digest, size and media type (the image config, here)."""

    digest: Digest
    size: int
    media_type: str

    def to_json(self) -> dict[str, Any]:
        return {"digest": str(self.digest), "media_type": self.media_type, "size": self.size}


@dataclass(frozen=True, slots=True)
class LayerRef:
    """A layer blob and the digest of its uncompressed tar (the config's diff_id)."""

    digest: Digest
    size: int
    media_type: str
    diff_id: Digest

    @property
    def compression(self) -> str:
        """``gzip``, ``zstd`` or ``none``, from the media type."""
        found = mt.layer_compression(self.media_type)
        if found is None:
            raise AssertionError(f"internal error: unchecked layer media type {self.media_type}")
        return found

    def to_json(self) -> dict[str, Any]:
        return {"diff_id": str(self.diff_id), "digest": str(self.digest),
                "media_type": self.media_type, "size": self.size}


@dataclass(frozen=True, slots=True)
class ResolvedImage:
    """Everything needed to pull one image for one platform, pinned by digest."""

    ref: ImageRef
    registry: str
    repository: str
    platform: Platform
    index_digest: Digest | None
    manifest_digest: Digest
    config: BlobRef
    layers: tuple[LayerRef, ...]

    @property
    def pinned(self) -> ImageRef:
        """The reference pinned to what was resolved (index digest if there was one)."""
        return self.ref.with_digest(self.index_digest or self.manifest_digest)

    def to_json(self) -> dict[str, Any]:
        """The lock-file entry: sorted keys, digests as strings, no floats."""
        return {
            "config": self.config.to_json(),
            "index_digest": str(self.index_digest) if self.index_digest else None,
            "layers": [layer.to_json() for layer in self.layers],
            "manifest_digest": str(self.manifest_digest),
            "platform": str(self.platform),
            "ref": str(self.ref),
            "registry": self.registry,
            "repository": self.repository,
        }

    @classmethod
    def from_json(cls, data: Any) -> ResolvedImage:
        """Rebuild from ``to_json`` output; raise LockError naming the bad field."""
        where = "lock entry"
        if isinstance(data, Mapping) and isinstance(data.get("ref"), str):
            where = f"lock entry {data['ref']!r}"
        try:
            if not isinstance(data, Mapping):
                raise ValueError("expected an object")
            config = _blob(data.get("config"), "config")
            layers = data.get("layers")
            if not isinstance(layers, list):
                raise ValueError("'layers' must be a list")
            index = data.get("index_digest")
            return cls(
                ref=parse_reference(_text(data, "ref")),
                registry=_text(data, "registry"),
                repository=_text(data, "repository"),
                platform=parse_platform(_text(data, "platform")),
                index_digest=None if index is None else parse_digest(_text(data, "index_digest")),
                manifest_digest=parse_digest(_text(data, "manifest_digest")),
                config=BlobRef(config.digest, config.size, config.media_type),
                layers=tuple(_layer(item, i) for i, item in enumerate(layers)),
            )
        except (ValueError, BadDigest, BadReference, BadPlatform) as err:
            raise LockError(f"{where}: {err}; run the resolve step again to rewrite it") from None


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key!r} must be a non-empty string")
    return value


def _size(data: Mapping[str, Any], what: str) -> int:
    size = data.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{what} size must be a non-negative integer")
    return size


def _blob(data: Any, what: str) -> BlobRef:
    if not isinstance(data, Mapping):
        raise ValueError(f"{what!r} must be an object")
    return BlobRef(parse_digest(_text(data, "digest")), _size(data, what),
                   _text(data, "media_type"))


def _layer(data: Any, position: int) -> LayerRef:
    blob = _blob(data, f"layer {position}")
    assert isinstance(data, Mapping)
    if mt.layer_compression(blob.media_type) is None:
        raise ValueError(f"layer {position} has unsupported media type {blob.media_type!r}")
    return LayerRef(blob.digest, blob.size, blob.media_type, parse_digest(_text(data, "diff_id")))


def head_digest(client: RegistryClient, ref: ImageRef) -> Digest | None:
    """The digest a tag points at now, by HEAD (free on Docker Hub); None if not told."""
    return client.head_manifest(ref.registry, ref.repository, ref.reference).digest


def resolve_image(client: RegistryClient, ref: ImageRef, platform: Platform,
                  blobs: BlobCache) -> ResolvedImage:
    """Resolve ``ref`` for ``platform``: manifests verified, config fetched and checked."""
    where = str(ref)
    top = client.get_manifest(ref.registry, ref.repository, ref.digest or ref.reference)
    document = parse_manifest_document(top.body, top.content_type, where=where)
    index_digest: Digest | None = None
    chosen: Platform | None = None
    if isinstance(document, Index):
        entry = select_manifest(document, platform, where=where)
        manifest = _platform_manifest(client, ref, entry, where=f"{where} for {entry.platform}")
        index_digest, manifest_digest, chosen = top.digest, entry.digest, entry.platform
    else:
        manifest, manifest_digest = document, top.digest
    config_desc = manifest.config
    if config_desc.size > CONFIG_MAX_BYTES:
        raise BadImage(f"{where}: image config is {config_desc.size} bytes, more than the"
                       f" {CONFIG_MAX_BYTES} byte limit")
    path = blobs.fetch(client, ref.registry, ref.repository, config_desc.digest, config_desc.size)
    config = parse_image_config(path.read_bytes(), where=f"{where} config {config_desc.digest}")
    if chosen is None:
        # A single-platform image: its config is the only word on its platform.
        if not platform.matches(config.platform):
            raise PlatformNotFound(where, str(platform), [str(config.platform)])
        chosen = config.platform
    elif (config.platform.os, config.platform.architecture) != (chosen.os, chosen.architecture):
        raise BadImage(f"{where}: the index lists this manifest as {chosen} but its config says"
                       f" {config.platform}; refusing an image that contradicts its index")
    if len(manifest.layers) != len(config.diff_ids):
        raise BadImage(f"{where}: the manifest has {len(manifest.layers)} layers but the config"
                       f" lists {len(config.diff_ids)} diff_ids; the image is corrupt")
    layers = tuple(_check_layer(desc, diff_id, where=where)
                   for desc, diff_id in zip(manifest.layers, config.diff_ids, strict=True))
    resolved = ResolvedImage(ref, ref.registry, ref.repository, chosen, index_digest,
                             manifest_digest, BlobRef(config_desc.digest, config_desc.size,
                                                      config_desc.media_type), layers)
    log.debug("resolve.done", ref=where, platform=str(chosen), manifest=str(manifest_digest),
             layers=len(layers))
    return resolved


def _platform_manifest(client: RegistryClient, ref: ImageRef, entry: Descriptor, *,
                       where: str) -> Manifest:
    child = client.get_manifest(ref.registry, ref.repository, entry.digest)  # digest checked
    if len(child.body) != entry.size:
        raise DigestMismatch(f"{where}: manifest {entry.digest} size", f"{entry.size} bytes",
                             f"{len(child.body)} bytes")
    document = parse_manifest_document(child.body, child.content_type, where=where)
    if isinstance(document, Index):
        raise BadImage(f"{where}: the index entry {entry.digest} is itself an index; nested"
                       " indexes are not supported")
    if document.media_type != entry.media_type:
        raise BadImage(f"{where}: the index says {entry.digest} is {entry.media_type!r} but it"
                       f" is {document.media_type!r}; refusing the mismatch")
    return document


def _check_layer(desc: Descriptor, diff_id: Digest, *, where: str) -> LayerRef:
    if desc.media_type in mt.NON_DISTRIBUTABLE_TYPES:
        raise BadImage(f"{where}: layer {desc.digest} is a foreign (non-distributable) layer"
                       f" ({desc.media_type}) whose bytes live outside the registry; such"
                       " images (Windows base layers) cannot become a root filesystem")
    if mt.layer_compression(desc.media_type) is None:
        raise BadImage(f"{where}: layer {desc.digest} has media type {desc.media_type!r};"
                       " supported: plain, gzip and zstd tar layers (OCI and Docker types)")
    return LayerRef(desc.digest, desc.size, desc.media_type, diff_id)
