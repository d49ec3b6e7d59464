"""Where a run keeps what it downloads and builds: the cache directory's layout.

One value, ``CacheLayout``, names every store under the cache directory; the
tasks, the worker jobs (it pickles) and gc all take it, so the layout is
spelled out in this one place::

    <root>/blobs/sha256/<hex>      verified blobs (registry.blobcache)
    <root>/layers/<hex>/           layer stores (layers.store)
    <root>/flat/<chain key>/       flat images (flat.image)
    <root>/base/                   left by earlier versions (derived builds' base images):
                                   gc removes it
    <root>/tools.json              remembered e2fsprogs versions (tasks.toolcache)
    <root>/doit.db                 doit's dependency database
    <root>/run.lock                one run per cache (project.runlock)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the blob cache's module loads only when a blob is touched
    from pipeline.registry.blobcache import BlobCache

__all__ = ["CacheLayout", "BLOBS", "LAYERS", "FLAT", "BASE", "STORES"]

BLOBS = "blobs"
LAYERS = "layers"
FLAT = "flat"
# Derived builds' base images, which earlier versions kept: nothing writes or reads
# here any more; gc empties and removes it.
BASE = "base"
STORES = (BLOBS, LAYERS, FLAT, BASE)
"""The directories gc sweeps: everything in them is ours and keyed by content."""


@dataclass(frozen=True, slots=True)
class CacheLayout:
    """The stores under one cache directory (paths only: nothing is created here)."""

    root: Path

    @property
    def blobs_root(self) -> Path:
        return self.root / BLOBS

    @property
    def layers_root(self) -> Path:
        return self.root / LAYERS

    @property
    def flat_root(self) -> Path:
        return self.root / FLAT

    @property
    def blobs(self) -> BlobCache:
        from pipeline.registry.blobcache import BlobCache

        return BlobCache(self.blobs_root)
