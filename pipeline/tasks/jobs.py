"""The jobs a run hands to a worker process: flattening an image and building its ext4.

Jobs take and return plain picklable values (paths, digests, options,
``CacheLayout``, results) and import their builders inside, so the worker
pool's server can preload this module cheaply and a run that builds nothing
never imports a builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.project.cache import CacheLayout

if TYPE_CHECKING:
    from pipeline.ext4.build import Ext4Result
    from pipeline.ext4.options import Ext4Options

__all__ = ["flatten_job", "image_job", "PRELOAD"]

PRELOAD = ("pipeline.tasks.jobs", "pipeline.flat.staging", "pipeline.ext4.build",
           "pipeline.ext4.derive.build", "pipeline.ext4.nativebuild")
"""What the worker pool's server imports once, so each worker starts with the job code."""


def flatten_job(cache: CacheLayout, digests: Sequence[str], staging: bool) -> Path:
    """Flatten the layer stores of ``digests`` (oldest first), with a staging tree when
    ``staging`` (the mkfs builder reads one); the flat image's path."""
    from pipeline.flat.staging import flatten_image
    from pipeline.layers.store import LayerStore

    stores = [LayerStore.open(cache.layers_root, digest) for digest in digests]
    return flatten_image(stores, cache.flat_root, staging=staging)


def image_job(cache: CacheLayout, chain: Sequence[str], flat: Path, output: Path,
              options: Ext4Options, seed: str, tools: Mapping[str, str]) -> Ext4Result:
    """``ext4.derive.build.build_image``: the native writer's image, or mkfs's, derived
    from its base's ext4 when its layers say so, else in full."""
    from pipeline.ext4.derive.build import build_image

    return build_image(layers_root=cache.layers_root, flat_root=cache.flat_root,
                       base_root=cache.base_root, chain=chain, flat_dir=flat, output=output,
                       options=options, seed=seed, tools=tools)
