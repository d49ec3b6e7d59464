"""Resolve an image reference to exactly what will be pulled: the lock entry.

``resolve_image`` walks reference -> (index ->) platform manifest -> config
and returns a ``ResolvedImage`` (the lock entry, defined with ``LayerRef``
and ``BlobRef`` in :mod:`.resolved`): every digest, size and media type
needed to fetch and verify the layers later, and the diff_ids to check them
against after decompression.

What it refuses to trust: every manifest is checked against the digest that
named it (the client does that), the platform manifest against the index
descriptor's size and media type, the config against its descriptor through
the verifying blob cache. It refuses images whose layer count and diff_id
count differ, layers that live outside the registry (foreign /
non-distributable), and layer media types it cannot unpack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from pipeline.base.digest import Digest
from pipeline.errors import BadImage, DigestMismatch, PlatformNotFound
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import (
    CONFIG_MAX_BYTES,
    Descriptor,
    ImageIndex,
    ImageManifest,
    parse_image_config,
    parse_manifest_document,
    select_manifest,
)
from pipeline.oci.platform import Platform
from pipeline.oci.reference import ImageRef

# The lock entry's values live in .resolved (no network imports, read every run);
# re-exported here, where the contract (docs/architecture.md) names them.
from pipeline.oci.resolved import BlobRef, LayerRef, ResolvedImage

if TYPE_CHECKING:  # only for annotations: resolving is handed a client and a cache
    from pipeline.registry.blobcache import BlobCache
    from pipeline.registry.client import RegistryClient

__all__ = ["BlobRef", "LayerRef", "ResolvedImage", "resolve_image", "head_digest"]

log = structlog.get_logger(__name__)


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
    if isinstance(document, ImageIndex):
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
                       where: str) -> ImageManifest:
    child = client.get_manifest(ref.registry, ref.repository, entry.digest)  # digest checked
    if len(child.body) != entry.size:
        raise DigestMismatch(f"{where}: manifest {entry.digest} size", f"{entry.size} bytes",
                             f"{len(child.body)} bytes")
    document = parse_manifest_document(child.body, child.content_type, where=where)
    if isinstance(document, ImageIndex):
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
