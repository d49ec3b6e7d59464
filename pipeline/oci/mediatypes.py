"""Media types of manifests, indexes, configs and layers, and the groups we act on.

Sources: OCI image-spec (media-types.md, manifest.md, layer.md) and Docker's
Image Manifest V2 Schema 2. Anything not listed here is refused by whoever
asks: this module only names things.
"""

from __future__ import annotations

__all__ = [
    "OCI_MANIFEST", "OCI_INDEX", "DOCKER_MANIFEST", "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1", "DOCKER_SCHEMA1_SIGNED", "OCI_CONFIG", "DOCKER_CONFIG", "OCI_EMPTY",
    "OCI_LAYER", "OCI_LAYER_GZIP", "OCI_LAYER_ZSTD", "DOCKER_LAYER", "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_ZSTD", "INDEX_TYPES", "IMAGE_MANIFEST_TYPES", "MANIFEST_TYPES",
    "SCHEMA1_TYPES", "CONFIG_TYPES", "LAYER_COMPRESSION", "NON_DISTRIBUTABLE_TYPES",
    "GENERIC_CONTENT_TYPES", "MANIFEST_ACCEPT", "base_type", "layer_compression",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"

OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
# The config of artifacts that are not images (image-spec manifest.md, "Guidelines
# for Artifact Usage").
OCI_EMPTY = "application/vnd.oci.empty.v1+json"

OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD = "application/vnd.docker.image.rootfs.diff.tar.zstd"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES
SCHEMA1_TYPES = frozenset({DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# Layer media type -> compression; "none" is a plain tar.
LAYER_COMPRESSION: dict[str, str] = {
    OCI_LAYER: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER: "none",
    DOCKER_LAYER_GZIP: "gzip",
    DOCKER_LAYER_ZSTD: "zstd",
}

# Layers whose bytes live outside the registry (Windows base layers, mostly).
# The OCI types are deprecated (image-spec 1.1) but still seen.
NON_DISTRIBUTABLE_TYPES = frozenset({
    "application/vnd.docker.image.rootfs.foreign.diff.tar",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
})

# Content-Types that say nothing about which manifest kind a body is.
GENERIC_CONTENT_TYPES = frozenset({"", "application/json", "text/plain",
                                   "application/octet-stream"})

# Indexes first: a registry that has one must give it to us so we pick the
# platform, not the registry. Schema 1 is deliberately absent.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST])


def base_type(content_type: str | None) -> str:
    """A Content-Type without parameters, lowercased: ``"A/B; charset=x"`` -> ``"a/b"``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def layer_compression(media_type: str) -> str | None:
    """``"gzip"``, ``"zstd"`` or ``"none"`` for a known layer type, else None."""
    return LAYER_COMPRESSION.get(media_type)
