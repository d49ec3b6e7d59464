"""Image manifests, configs and indexes built in Python, OCI or Docker schema 2.

JSON is written with sorted keys and no spaces and every timestamp is fixed,
so the same inputs give the same digests on every run. Hooks produce the
broken images later tests need: a config whose ``diff_ids`` disagree with the
layers, extra config or manifest keys, BuildKit-style attestation manifests
(``unknown/unknown``) in an index.

The tar vocabulary and layer builders are re-exported here, so tests can
``from tests.harness.images import file, dir, make_layer, make_image``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .layers import DOCKER_LAYER_TYPES, OCI_LAYER_TYPES, Layer, bomb, make_layer, sha256
from .tarball import (
    MTIME,
    Member,
    blockdev,
    chardev,
    dir,
    fifo,
    file,
    hardlink,
    opaque,
    raw,
    raw_bytes,
    symlink,
    tar_bytes,
    whiteout,
    write_tar,
    zeros,
)

__all__ = [
    "Blob", "Image", "Index", "make_image", "make_index", "canonical_json", "MT",
    # re-exported building blocks
    "Layer", "Member", "make_layer", "bomb", "file", "dir", "symlink", "hardlink", "chardev",
    "blockdev", "fifo", "whiteout", "opaque", "zeros", "raw", "raw_bytes", "tar_bytes",
    "write_tar", "MTIME", "OCI_LAYER_TYPES", "DOCKER_LAYER_TYPES", "sha256",
]

CREATED = "2023-11-14T22:13:20Z"


class MT:
    """Media types (OCI image-spec media-types.md; Docker image manifest v2 schema 2)."""

    OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
    OCI_INDEX = "application/vnd.oci.image.index.v1+json"
    OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
    DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
    DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
    DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
    DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
    IN_TOTO = "application/vnd.in-toto+json"


def canonical_json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True, slots=True)
class Blob:
    """Any blob other than a layer (image configs, attestation statements)."""

    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256(self.data)

    @property
    def size(self) -> int:
        return len(self.data)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True, slots=True)
class Image:
    """One platform's image: manifest bytes, config and layers."""

    manifest: bytes
    media_type: str
    config: Blob
    layers: tuple[Layer, ...]
    platform: Mapping[str, str]
    """``{"os", "architecture"[, "variant"]}`` as the index entry will say."""
    layer_blobs: tuple[Blob | Layer, ...] = ()
    """Non-tar "layers" (attestation statements); empty for normal images."""

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def manifest_json(self) -> dict[str, object]:
        return json.loads(self.manifest)  # type: ignore[no-any-return]

    @property
    def config_json(self) -> dict[str, object]:
        return json.loads(self.config.data)  # type: ignore[no-any-return]

    @property
    def blobs(self) -> tuple[Blob | Layer, ...]:
        """Everything to upload before the manifest: config first, then layers."""
        return (self.config, *self.layers, *self.layer_blobs)

    def descriptor(self, *, annotations: Mapping[str, str] | None = None,
                   platform: bool = True) -> dict[str, object]:
        d: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest,
                                "size": self.size}
        if platform:
            d["platform"] = dict(self.platform)
        if annotations:
            d["annotations"] = dict(annotations)
        return d


@dataclass(frozen=True, slots=True)
class Index:
    """A multi-platform index (OCI) or manifest list (Docker)."""

    manifest: bytes
    media_type: str
    images: tuple[Image, ...]
    """The platform images, in index order."""
    attestations: tuple[Image, ...] = ()
    """Attestation manifests (platform unknown/unknown), listed after the images."""

    @property
    def digest(self) -> str:
        return sha256(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)

    @property
    def manifest_json(self) -> dict[str, object]:
        return json.loads(self.manifest)  # type: ignore[no-any-return]

    def image_for(self, os: str, architecture: str, variant: str | None = None) -> Image:
        for image in self.images:
            p = image.platform
            if (p["os"], p["architecture"], p.get("variant")) == (os, architecture, variant):
                return image
        raise KeyError(f"{os}/{architecture}/{variant}")


def make_image(layers: Sequence[Layer], *, os: str = "linux", architecture: str = "amd64",
               variant: str | None = None, oci: bool = True,
               diff_ids: Sequence[str] | None = None,
               config: Mapping[str, object] | None = None,
               container_config: Mapping[str, object] | None = None,
               annotations: Mapping[str, str] | None = None,
               manifest_extra: Mapping[str, object] | None = None,
               config_media_type: str | None = None) -> Image:
    """An image manifest + config over ``layers`` (oldest first).

    ``diff_ids`` replaces the honest list (a diff_id mismatch); ``config`` adds
    or replaces top-level config keys; ``container_config`` is the runtime
    ``config`` object (Env, Cmd...); ``annotations`` and ``manifest_extra`` go
    into the manifest; ``config_media_type`` overrides the config's type (to
    make a non-image artifact).
    """
    platform: dict[str, str] = {"architecture": architecture, "os": os}
    if variant:
        platform["variant"] = variant
    body: dict[str, object] = {
        **platform,
        "created": CREATED,
        "config": dict(container_config or {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"]}),
        "rootfs": {"type": "layers",
                   "diff_ids": list(diff_ids if diff_ids is not None
                                    else [layer.diff_id for layer in layers])},
        "history": [{"created": CREATED, "created_by": f"harness layer {i}"}
                    for i in range(len(layers))],
    }
    body.update(config or {})
    cfg = Blob(canonical_json(body),
               config_media_type or (MT.OCI_CONFIG if oci else MT.DOCKER_CONFIG))
    media_type = MT.OCI_MANIFEST if oci else MT.DOCKER_MANIFEST
    manifest: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": cfg.descriptor(),
        "layers": [layer.descriptor(oci=oci) for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    manifest.update(manifest_extra or {})
    return Image(canonical_json(manifest), media_type, cfg, tuple(layers), platform)


def _attestation(subject: Image) -> Image:
    """A BuildKit-style attestation manifest for ``subject``: an OCI manifest whose
    single "layer" is an in-toto statement, listed as platform unknown/unknown."""
    statement = Blob(canonical_json({
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://slsa.dev/provenance/v0.2",
        "subject": [{"name": "_", "digest": {"sha256": subject.digest.split(":", 1)[1]}}],
        "predicate": {"builder": {"id": "rootfs-pipeline-tests"}},
    }), MT.IN_TOTO)
    cfg = Blob(canonical_json({"architecture": "unknown", "os": "unknown", "config": {},
                               "rootfs": {"type": "layers",
                                          "diff_ids": [statement.digest]}}), MT.OCI_CONFIG)
    layer = {**statement.descriptor(),
             "annotations": {"in-toto.io/predicate-type": "https://slsa.dev/provenance/v0.2"}}
    manifest = {"schemaVersion": 2, "mediaType": MT.OCI_MANIFEST, "config": cfg.descriptor(),
                "layers": [layer]}
    return Image(canonical_json(manifest), MT.OCI_MANIFEST, cfg, (),
                 {"architecture": "unknown", "os": "unknown"}, layer_blobs=(statement,))


def make_index(images: Sequence[Image], *, oci: bool = True, attestation: bool = False,
               annotations: Mapping[str, str] | None = None,
               extra_entries: Sequence[Mapping[str, object]] = ()) -> Index:
    """An index over ``images``; ``attestation`` adds one attestation manifest per
    image after them, annotated ``vnd.docker.reference.type: attestation-manifest``
    and ``vnd.docker.reference.digest: <image digest>`` as BuildKit does.
    ``extra_entries`` are appended verbatim (entries for manifests not pushed)."""
    atts = tuple(_attestation(image) for image in images) if attestation else ()
    entries: list[object] = [image.descriptor() for image in images]
    entries += [att.descriptor(annotations={
        "vnd.docker.reference.digest": image.digest,
        "vnd.docker.reference.type": "attestation-manifest"})
        for image, att in zip(images, atts)]
    entries += [dict(e) for e in extra_entries]
    media_type = MT.OCI_INDEX if oci else MT.DOCKER_LIST
    index: dict[str, object] = {"schemaVersion": 2, "mediaType": media_type,
                                "manifests": entries}
    if annotations:
        index["annotations"] = dict(annotations)
    return Index(canonical_json(index), media_type, tuple(images), atts)
