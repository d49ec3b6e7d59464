"""Task family ``fetch-blob:<digest>``: one download per unique layer blob.

Up to date means: the blob file is where the cache keeps it and is the very
file that was verified (same size and mtime as when its digest was last
checked, kept in doit's values). A no-op run therefore reads no blob at all.
When the stamp differs (the file was rewritten, restored from a CI cache,
or tampered with) the step re-hashes it; a blob that no longer matches its
digest is deleted and fetched again, never used.

The stamp leaves the inode out so that a CI cache restore (new inodes, same
times) costs nothing; if the times changed too it costs one re-hash.

A download of a layer whose store is not finished yet is unpacked as it
arrives (``overlap.OverlappedUnpack``, with the unpack task's limits): the
store is committed only once the blob verified and the diff_id matched, and
``unpack:<digest>`` then finds it finished. Whenever the overlap gives up
(a restarted download, bad bytes, a layer error) the unpack task unpacks
the verified blob as before.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog
from doit.tools import config_changed

from pipeline.base.files import file_stamp, remove_path
from pipeline.base.terminal import format_bytes
from pipeline.errors import DigestMismatch
from pipeline.layers.limits import Limits
from pipeline.oci.resolved import LayerRef
from pipeline.registry.sources import Source
from pipeline.tasks.context import RunContext
from pipeline.tasks.plan import LayerPlan, RunPlan
from pipeline.tasks.steps import IO, action, group, note
from pipeline.tasks.unpack import DEFAULT_LIMITS, layer_finished

__all__ = ["fetch_tasks", "fetch_step", "blob_intact", "fetch_config"]

log = structlog.get_logger(__name__)


def fetch_config(layer: LayerRef) -> dict[str, Any]:
    return {"digest": str(layer.digest), "size": layer.size}


def blob_intact(task: Any, values: dict[str, Any], path: Path, size: int) -> bool:
    """doit uptodate: the blob is there, of its size, and unchanged since it was verified."""
    stamp = file_stamp(path)
    return stamp is not None and stamp[0] == size and list(stamp) == values.get("stamp")


def _sources(ctx: RunContext, plan: LayerPlan) -> list[Source]:
    found: list[Source] = []
    for registry, repository in plan.origins:
        for source in ctx.registries.sources(registry, repository):
            if source not in found:
                found.append(source)
    return found


def fetch_step(ctx: RunContext, plan: LayerPlan,
               limits: Limits | None = DEFAULT_LIMITS) -> dict[str, Any]:
    """Make sure the verified blob is in the cache; return its stamp for ``blob_intact``.

    With ``limits`` (the unpack task's), a layer without a finished store is
    unpacked from the bytes as they download (``overlap.OverlappedUnpack``).
    """
    layer, cache = plan.layer, ctx.cache.blobs
    path = cache.path(layer.digest)
    if file_stamp(path) is not None:
        try:
            cache.verify(layer.digest, layer.size)
            note(outcome="cached blob verified", bytes=layer.size)
            return {"stamp": list(file_stamp(path) or ())}
        except DigestMismatch as err:
            # Never use it: the blob cache only trusts bytes it verified itself.
            log.warning("blobcache.corrupt_refetch", error=str(err))
            path.unlink(missing_ok=True)
        except FileNotFoundError:
            pass
    from pipeline.layers.overlap import (
        OverlappedUnpack,  # the layer reader loads only when a blob downloads
    )

    started = time.monotonic()
    progress = ctx.progress.start(layer.size)
    # Unpack while downloading when the layer still needs it; the unpack task
    # then finds the finished store (or, if the overlap gave up, does it itself).
    tee = (None if layer_finished(ctx.cache.layers_root, layer) or limits is None else
           OverlappedUnpack(layer, ctx.cache.layers_root, limits=limits))
    try:
        with tee or contextlib.nullcontext():
            ctx.registries.first_success(
                _sources(ctx, plan), f"blob {layer.digest}",
                lambda client, source: cache.fetch(client, source.registry, source.repository,
                                                   layer.digest, layer.size, progress=progress,
                                                   tee=tee))
    finally:
        progress.finish()
    seconds = time.monotonic() - started
    overlap = ("not needed" if tee is None else "unpacked" if tee.store is not None else
               f"gave up ({tee.gave_up}); the unpack task reads the blob")
    note(outcome="fetched", bytes=layer.size, overlap=overlap,
         rate=f"{format_bytes(layer.size / seconds if seconds > 0 else 0)}/s")
    return {"stamp": list(file_stamp(path) or ())}


def fetch_tasks(ctx: RunContext, plan: RunPlan,
                limits: Limits = DEFAULT_LIMITS) -> Iterator[dict[str, Any]]:
    yield group("download every layer blob the images need (verified, cached by digest)",
                basename="fetch-blob")
    for layer_plan in plan.layers:
        layer = layer_plan.layer
        name = f"fetch-blob:{layer.digest}"
        path = ctx.cache.blobs.path(layer.digest)
        yield {
            "basename": "fetch-blob",
            "name": str(layer.digest),
            "doc": f"fetch layer blob ({format_bytes(layer.size)}) used by "
                   f"{', '.join(layer_plan.images)}",
            "actions": [action(fetch_step, ctx, layer_plan, limits, name=name,
                               images=layer_plan.images, digest=str(layer.digest))],
            "uptodate": [config_changed(fetch_config(layer)),
                         (blob_intact, [path, layer.size], {})],
            "clean": [(remove_path, [path])],
            "io": IO,
            "meta": {"images": list(layer_plan.images)},
        }
