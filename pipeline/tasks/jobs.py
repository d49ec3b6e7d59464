"""The jobs a run hands to a worker process: flattening an image and building its ext4.

Jobs take and return plain picklable values (paths, digests, options,
``CacheLayout``, results) and import their builders inside, so the worker
pool's server can preload this module cheaply and a run that builds nothing
never imports a builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.project.cache import CacheLayout

if TYPE_CHECKING:
    from pipeline.ext4.build import Ext4Result
    from pipeline.ext4.options import Ext4Options
    from pipeline.remote.fetch import Fetched

__all__ = ["flatten_job", "image_job", "fetch_job", "push_job", "PRELOAD"]

PRELOAD = ("pipeline.tasks.jobs", "pipeline.flat.staging", "pipeline.ext4.build",
           "pipeline.ext4.nativebuild")
"""What the worker pool's server imports once, so each worker starts with the job code."""


def flatten_job(cache: CacheLayout, digests: Sequence[str], staging: bool) -> Path:
    """Flatten the layer stores of ``digests`` (oldest first), with a staging tree when
    ``staging`` (the mkfs builder reads one); the flat image's path."""
    from pipeline.flat.staging import flatten_image
    from pipeline.layers.store import LayerStore

    stores = [LayerStore.open(cache.layers_root, digest) for digest in digests]
    return flatten_image(stores, cache.flat_root, staging=staging)


def image_job(cache: CacheLayout, flat: Path, output: Path, options: Ext4Options,
              seed: str) -> Ext4Result:
    """``ext4.builder.build_image``: the image built in full by its builder (the native
    writer, or mkfs.ext4)."""
    from pipeline.ext4.builder import build_image

    return build_image(flat, cache.layers_root, output, options, seed=seed)


def fetch_job(registry: str, repository: str, tag: str, output: Path, key: str,
              material: Mapping[str, Any], insecure_hosts: frozenset[str]) -> Fetched:
    """``remote.fetch.fetch_artifact`` with a client of its own: hashing and decompressing
    a cache hit beside another one uses a core of its own, not a share of one GIL."""
    from pipeline.registry.client import RegistryClient
    from pipeline.remote.fetch import fetch_artifact

    with RegistryClient(insecure_hosts=insecure_hosts) as client:
        return fetch_artifact(client, registry, repository, tag, output, key=key,
                              material=material)


def push_job(registry: str, repository: str, image: Path, insecure_hosts: frozenset[str],
             options: Mapping[str, Any]) -> str:
    """``remote.artifact.push_artifact`` with a client of its own (compressing and hashing
    beside another build or push use a core of their own); the manifest digest."""
    from pipeline.registry.client import RegistryClient
    from pipeline.remote.artifact import push_artifact

    with RegistryClient(insecure_hosts=insecure_hosts) as client:
        return str(push_artifact(client, registry, repository, image, **dict(options)))
