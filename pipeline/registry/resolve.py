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
from pipeline.errors import BadImage, DigestMismatch
from pipeline.oci.documents import (
    Descriptor,
    ImageIndex,
    ImageManifest,
    parse_image_config,
    parse_manifest_document,
    select_manifest,
)
from pipeline.oci.pin import check_config_size, pin_image
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
    check_config_size(config_desc, where=where)
    path = blobs.fetch(client, ref.registry, ref.repository, config_desc.digest, config_desc.size)
    config = parse_image_config(path.read_bytes(), where=f"{where} config {config_desc.digest}")
    resolved = pin_image(ref, ref.registry, ref.repository, platform, chosen=chosen,
                         index_digest=index_digest, manifest_digest=manifest_digest,
                         manifest=manifest, config=config, where=where)
    log.debug("resolve.done", ref=where, platform=str(resolved.platform),
              manifest=str(manifest_digest), layers=len(resolved.layers))
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

