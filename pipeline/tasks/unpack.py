"""Task family ``unpack:<digest>``: one layer store per unique layer.

Up to date means: a finished store for that digest exists (its marker file,
written last, is there). A layer store is immutable once finished and is
shared by every image using the layer, so nothing else about it is checked
and no blob is opened on a no-op run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doit.tools import config_changed

from pipeline.base.files import remove_path
from pipeline.errors import LayerError
from pipeline.layers.limits import Limits
from pipeline.layers.store import MARKER_NAME, LayerStore
from pipeline.oci.resolved import LayerRef
from pipeline.tasks.context import RunContext
from pipeline.tasks.plan import RunPlan
from pipeline.tasks.steps import IO, action, group, note

__all__ = ["unpack_tasks", "unpack_step", "layer_finished", "unpack_config", "check_diff_id"]

DEFAULT_LIMITS = Limits()


def unpack_config(layer: LayerRef, limits: Limits) -> dict[str, Any]:
    return {"digest": str(layer.digest), "diff_id": str(layer.diff_id),
            "media_type": layer.media_type,
            "limits": {field: getattr(limits, field) for field in limits.__dataclass_fields__}}


def layer_finished(layers_root: Path, layer: LayerRef) -> bool:
    """doit uptodate: the finished store for this digest exists."""
    return (LayerStore.path_for(layers_root, layer.digest) / MARKER_NAME).is_file()


def check_diff_id(store: LayerStore, layer: LayerRef) -> None:
    """A store made earlier was verified against *its* image's diff_id; this one must agree."""
    if store.diff_id != str(layer.diff_id):
        raise LayerError(str(layer.digest), f"the image declares diff_id {layer.diff_id} but "
                         f"this blob's uncompressed content is {store.diff_id} (verified when "
                         "it was unpacked); the image config is wrong")


def unpack_step(ctx: RunContext, layer: LayerRef, limits: Limits) -> None:
    from pipeline.layers.unpack import (
        unpack_layer,  # the layer reader loads only when a layer is unpacked
    )

    cache = ctx.cache
    store = unpack_layer(cache.blobs.path(layer.digest), layer, cache.layers_root, limits=limits)
    check_diff_id(store, layer)
    note(entries=store.entries_count, files=store.files_count, bytes=store.stream_bytes)


def unpack_tasks(ctx: RunContext, plan: RunPlan,
                 limits: Limits = DEFAULT_LIMITS) -> Iterator[dict[str, Any]]:
    yield group("unpack every layer into a content store (once per layer digest)",
                basename="unpack")
    for layer_plan in plan.layers:
        layer = layer_plan.layer
        name = f"unpack:{layer.digest}"
        yield {
            "basename": "unpack",
            "name": str(layer.digest),
            "doc": f"unpack layer into a content store (used by {', '.join(layer_plan.images)})",
            "actions": [action(unpack_step, ctx, layer, limits, name=name,
                               images=layer_plan.images, digest=str(layer.digest))],
            "task_dep": [f"fetch-blob:{layer.digest}"],
            "uptodate": [config_changed(unpack_config(layer, limits)),
                         (layer_finished, [ctx.cache.layers_root, layer], {})],
            "clean": [(remove_path, [LayerStore.path_for(ctx.cache.layers_root, layer.digest)])],
            "io": IO,
            "meta": {"images": list(layer_plan.images)},
        }
