"""From a manifest and its config to the lock entry: the checks every source shares (no I/O).

A registry (``registry.resolve``) and a local layout or archive
(``local.source``) read their documents differently but must pin an image
by the same rules, so both end here: the config's platform agrees with the
index entry (or, for a single-platform image, with the platform asked for),
there are as many diff_ids as layers, and every layer is one we can unpack
and whose bytes come with the image (no foreign layers).
"""

from __future__ import annotations

from pipeline.base.digest import Digest
from pipeline.errors import BadImage, PlatformNotFound
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import CONFIG_MAX_BYTES, Descriptor, ImageConfig, ImageManifest
from pipeline.oci.platform import Platform
from pipeline.oci.resolved import BlobRef, ImageSource, LayerRef, ResolvedImage

__all__ = ["check_config_size", "pin_image"]


def check_config_size(config: Descriptor, *, where: str) -> None:
    if config.size > CONFIG_MAX_BYTES:
        raise BadImage(f"{where}: image config is {config.size} bytes, more than the"
                       f" {CONFIG_MAX_BYTES} byte limit")


def pin_image(ref: ImageSource, registry: str, repository: str, platform: Platform, *,
              chosen: Platform | None, index_digest: Digest | None, manifest_digest: Digest,
              manifest: ImageManifest, config: ImageConfig, where: str) -> ResolvedImage:
    """The ResolvedImage of ``manifest`` (chosen from an index for ``chosen``, if any)."""
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
    desc = manifest.config
    return ResolvedImage(ref, registry, repository, chosen, index_digest, manifest_digest,
                         BlobRef(desc.digest, desc.size, desc.media_type), layers)


def _check_layer(desc: Descriptor, diff_id: Digest, *, where: str) -> LayerRef:
    if desc.media_type in mt.NON_DISTRIBUTABLE_TYPES:
        raise BadImage(f"{where}: layer {desc.digest} is a foreign (non-distributable) layer"
                       f" ({desc.media_type}) whose bytes live outside the registry; such"
                       " images (Windows base layers) cannot become a root filesystem")
    if mt.layer_compression(desc.media_type) is None:
        raise BadImage(f"{where}: layer {desc.digest} has media type {desc.media_type!r};"
                       " supported: plain, gzip and zstd tar layers (OCI and Docker types)")
    return LayerRef(desc.digest, desc.size, desc.media_type, diff_id)
