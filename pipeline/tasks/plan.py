"""The build plan: which images, blobs and layers this run deals with, from the lock.

Pure data, computed from the manifest and the lock file without any I/O
beyond reading the lock: task creators call it at load time (``doit list``)
and again after the resolve tasks ran (``doit``). An image whose lock entry
does not match its reference and platform is left out: its tasks appear once
it has been resolved, never from a stale entry.

Blobs and layers are keyed by digest, so two images sharing a base layer
share one fetch and one unpack; the sources of a blob are every (registry,
repository) of the images that use it, in manifest order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.flat.image import chain_key
from pipeline.oci.resolved import LayerRef, ResolvedImage
from pipeline.project.config import ImageSpec, Manifest
from pipeline.project.lockfile import LockEntry

__all__ = ["ImagePlan", "LayerPlan", "RunPlan", "plan_run", "current_entry"]


@dataclass(frozen=True, slots=True)
class ImagePlan:
    spec: ImageSpec
    entry: LockEntry

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def resolved(self) -> ResolvedImage:
        return self.entry.resolved

    @property
    def chain(self) -> tuple[str, ...]:
        """Layer digests, oldest first."""
        return tuple(str(layer.digest) for layer in self.resolved.layers)

    @property
    def chain_key(self) -> str:
        return chain_key(self.chain)


@dataclass(frozen=True, slots=True)
class LayerPlan:
    """One unique layer blob: what to fetch and unpack, for which images, from where."""

    layer: LayerRef
    images: tuple[str, ...]
    origins: tuple[tuple[str, str], ...]
    """(registry, repository) of each image using it, first use first, no repeats."""


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


def plan_run(manifest: Manifest, entries: Mapping[str, LockEntry]) -> RunPlan:
    images: list[ImagePlan] = []
    unresolved: list[str] = []
    layers: dict[str, tuple[LayerRef, list[str], list[tuple[str, str]]]] = {}
    for spec in manifest.images:
        entry = current_entry(spec, entries)
        if entry is None:
            unresolved.append(spec.name)
            continue
        images.append(ImagePlan(spec, entry))
        resolved = entry.resolved
        origin = (resolved.registry, resolved.repository)
        for layer in resolved.layers:
            found = layers.setdefault(str(layer.digest), (layer, [], []))
            if spec.name not in found[1]:
                found[1].append(spec.name)
            if origin not in found[2]:
                found[2].append(origin)
    return RunPlan(
        images=tuple(images),
        layers=tuple(LayerPlan(layer, tuple(names), tuple(origins))
                     for layer, names, origins in layers.values()),
        unresolved=tuple(unresolved))
