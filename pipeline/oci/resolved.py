"""What an image reference resolved to: the pinned values the lock file records.

``ResolvedImage`` (with its ``BlobRef`` config and ``LayerRef`` layers) is
the lock entry of one image: every digest, size and media type needed to
fetch and verify the image later, and the diff_ids to check the layers
against after decompression. ``registry.resolve.resolve_image`` makes one
from a registry, ``local.source.resolve_local`` from an OCI layout or an
image archive; ``lockfile`` reads and writes them.

An image from a local source has no registry and repository; its entry
records ``source``: the kind, the path as written and ``identity``, the
digest that changes when the layout or archive holds another image (see
``local.source.probe_local``).

This module does no I/O and imports nothing that talks to the network, so
reading the lock (every run, a no-op run included) stays cheap.

What it refuses to trust: every field read back from JSON (``from_json``):
digests, references and platforms are parsed and validated, sizes must be
non-negative integers and layer media types ones we can unpack; anything
else is a LockError naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.base.digest import Digest, parse_digest
from pipeline.errors import BadDigest, BadPlatform, BadReference, LockError
from pipeline.oci import mediatypes as mt
from pipeline.oci.localref import LocalRef, is_local_reference, parse_local_reference
from pipeline.oci.platform import Platform, parse_platform
from pipeline.oci.reference import ImageRef, parse_reference

__all__ = ["BlobRef", "ImageSource", "LayerRef", "ResolvedImage", "parse_source"]

ImageSource = ImageRef | LocalRef
"""Where an image comes from: a registry reference or a local layout or archive."""


def parse_source(text: str) -> ImageSource:
    """A reference as written in images.toml: local (``oci:``...) or a registry's."""
    return parse_local_reference(text) if is_local_reference(text) else parse_reference(text)


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

    ref: ImageSource
    registry: str
    """Empty for a local source."""
    repository: str
    """Empty for a local source."""
    platform: Platform
    index_digest: Digest | None
    manifest_digest: Digest
    config: BlobRef
    layers: tuple[LayerRef, ...]
    identity: Digest | None = None
    """A local source's identity when it was resolved (None for a registry)."""

    @property
    def pinned(self) -> ImageRef:
        """The reference pinned to what was resolved (index digest if there was one)."""
        if not isinstance(self.ref, ImageRef):
            raise AssertionError(f"internal error: {self.ref} is a local source, not pinnable")
        return self.ref.with_digest(self.index_digest or self.manifest_digest)

    @property
    def local(self) -> LocalRef | None:
        return self.ref if isinstance(self.ref, LocalRef) else None

    def to_json(self) -> dict[str, Any]:
        """The lock-file entry: sorted keys, digests as strings, no floats."""
        found: dict[str, Any] = {
            "config": self.config.to_json(),
            "index_digest": str(self.index_digest) if self.index_digest else None,
            "layers": [layer.to_json() for layer in self.layers],
            "manifest_digest": str(self.manifest_digest),
            "platform": str(self.platform),
            "ref": str(self.ref),
        }
        if isinstance(self.ref, LocalRef):
            found["source"] = {"kind": self.ref.kind, "path": self.ref.path,
                               "identity": str(self.identity)}
        else:
            found.update(registry=self.registry, repository=self.repository)
        return found

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
            ref, registry, repository, identity = _origin(data)
            return cls(
                ref=ref,
                registry=registry,
                repository=repository,
                identity=identity,
                platform=parse_platform(_text(data, "platform")),
                index_digest=None if index is None else parse_digest(_text(data, "index_digest")),
                manifest_digest=parse_digest(_text(data, "manifest_digest")),
                config=BlobRef(config.digest, config.size, config.media_type),
                layers=tuple(_layer(item, i) for i, item in enumerate(layers)),
            )
        except (ValueError, BadDigest, BadReference, BadPlatform) as err:
            raise LockError(f"{where}: {err}; run the resolve step again to rewrite it") from None


def _origin(data: Mapping[str, Any]) -> tuple[ImageSource, str, str, Digest | None]:
    """(ref, registry, repository, identity) of a registry or a local entry."""
    source = data.get("source")
    if source is None:
        return parse_reference(_text(data, "ref")), _text(data, "registry"), _text(
            data, "repository"), None
    if not isinstance(source, Mapping):
        raise ValueError("'source' must be an object")
    ref = parse_local_reference(_text(data, "ref"))
    if (ref.kind, ref.path) != (source.get("kind"), source.get("path")):
        raise ValueError("'source' kind and path disagree with 'ref'")
    return ref, "", "", parse_digest(_text(source, "identity"))


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
