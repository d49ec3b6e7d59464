"""The build plan: which images, blobs and layers this run deals with, from the lock.

Pure data, computed from the manifest and the lock file without any I/O
beyond reading the lock: task creators call it at load time (``doit list``)
and again after the resolve tasks ran (``doit``). An image whose lock entry
does not match its reference and platform is left out: its tasks appear once
it has been resolved, never from a stale entry.

Blobs and layers are keyed by digest, so two images sharing a base layer
share one fetch and one unpack; the sources of a blob are every (registry,
repository) of the images that use it, in manifest order, and every local
layout or archive that holds it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from pipeline.base.digest import Digest
from pipeline.flat.image import chain_key
from pipeline.layers.configfile import config_layer_key
from pipeline.oci.localref import LocalRef
from pipeline.oci.resolved import LayerRef, ResolvedImage
from pipeline.project.config import ImageSpec, Manifest
from pipeline.project.lockfile import LockEntry

__all__ = ["ImagePlan", "LayerPlan", "RunPlan", "plan_run", "current_entry"]


@dataclass(frozen=True, slots=True)
class ImagePlan:
    spec: ImageSpec
    entry: LockEntry
    chain: tuple[str, ...] = field(init=False)
    """What the flat image and the ext4 are made of: the layers, oldest first, then the
    ``config_path`` file's layer if there is one."""
    chain_key: str = field(init=False)

    def __post_init__(self) -> None:
        # Computed once: every task creator of the image asks for them.
        extra = self.config_layer
        chain = self.layer_chain + ((str(extra),) if extra is not None else ())
        object.__setattr__(self, "chain", chain)
        object.__setattr__(self, "chain_key", chain_key(chain))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def resolved(self) -> ResolvedImage:
        return self.entry.resolved

    @property
    def layer_chain(self) -> tuple[str, ...]:
        """The image's layer digests, oldest first."""
        return tuple(str(layer.digest) for layer in self.resolved.layers)

    @property
    def config_layer(self) -> Digest | None:
        """The key of the ``config_path`` file's layer store, when the image has one."""
        if self.spec.config_path is None:
            return None
        return config_layer_key(self.resolved.config.digest, self.layer_chain,
                                self.spec.config_path)


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """One unique layer blob: what to fetch and unpack, for which images, from where."""

    layer: LayerRef
    images: tuple[str, ...]
    origins: tuple[tuple[str, str], ...]
    """(registry, repository) of each image using it, first use first, no repeats."""
    local: tuple[LocalRef, ...] = ()
    """The local layouts and archives of the images using it (read before any registry)."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    images: tuple[ImagePlan, ...]
    layers: tuple[LayerPlan, ...]
    unresolved: tuple[str, ...]
    """Images of the manifest without a current lock entry."""


def current_entry(spec: ImageSpec, entries: Mapping[str, LockEntry]) -> LockEntry | None:
    """The lock entry of ``spec`` if it was resolved from this exact reference and platform."""
    entry = entries.get(spec.name)
    if entry is not None and entry.matches(spec.ref_text, str(spec.platform)):
        return entry
    return None


def plan_run(manifest: Manifest, entries: Mapping[str, LockEntry], *,
             only: Collection[str] | None = None) -> RunPlan:
    """What a run builds from the lock: every image of ``manifest``, or those named in ``only``."""
    images: list[ImagePlan] = []
    unresolved: list[str] = []
    layers: dict[str, tuple[LayerRef, list[str], list[tuple[str, str]], list[LocalRef]]] = {}
    for spec in manifest.images:
        if only is not None and spec.name not in only:
            continue
        entry = current_entry(spec, entries)
        if entry is None:
            unresolved.append(spec.name)
            continue
        images.append(ImagePlan(spec, entry))
        resolved = entry.resolved
        local = resolved.local
        origin = (resolved.registry, resolved.repository)
        for layer in resolved.layers:
            found = layers.setdefault(str(layer.digest), (layer, [], [], []))
            if spec.name not in found[1]:
                found[1].append(spec.name)
            if local is not None:
                if local not in found[3]:
                    found[3].append(local)
            elif origin not in found[2]:
                found[2].append(origin)
    return RunPlan(
        images=tuple(images),
        layers=tuple(LayerPlan(layer, tuple(names), tuple(origins), tuple(local))
                     for layer, names, origins, local in layers.values()),
        unresolved=tuple(unresolved))
