"""Task family ``flatten:<image>``: the image's layers replayed into a flat image.

Keyed by the ordered layer digests (``flatimage.chain_key``): up to date
means a finished flat image for that chain exists (its header, written last,
is there). Two images with the same layers in the same order share one flat
image; a per-chain lock keeps their two flatten tasks from doing the work
twice when they run in parallel. Flattening is pure Python: beside another
such job it runs in a worker process (``RunContext.run_job``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doit.tools import config_changed

from pipeline.base.files import remove_path
from pipeline.flat.image import HEADER_NAME
from pipeline.layers.store import LayerStore
from pipeline.tasks.context import RunContext
from pipeline.tasks.plan import ImagePlan, RunPlan
from pipeline.tasks.steps import IO, action, group, note
from pipeline.tasks.unpack import check_diff_id

__all__ = ["flatten_tasks", "flatten_step", "flat_finished", "flatten_config"]


def flatten_config(image: ImagePlan) -> dict[str, Any]:
    return {"chain": list(image.chain)}


def flat_finished(flat_root: Path, chain_key: str) -> bool:
    """doit uptodate: the finished flat image for this chain exists."""
    return (flat_root / chain_key / HEADER_NAME).is_file()


def flatten_step(ctx: RunContext, image: ImagePlan) -> None:
    from pipeline.tasks.jobs import (
        flatten_job,  # the flattener loads only when an image is flattened
    )

    for layer in image.resolved.layers:
        check_diff_id(LayerStore.open(ctx.cache.layers_root, layer.digest), layer)
    with ctx.chain_lock(image.chain_key):
        # Pure Python from end to end: beside another job, a worker process runs it.
        flat = ctx.run_job(flatten_job, ctx.cache, list(image.chain))
    note(flat=str(flat), layers=len(image.chain))


def flatten_tasks(ctx: RunContext, plan: RunPlan) -> Iterator[dict[str, Any]]:
    yield group("flatten each image's layers into a staging tree (once per layer chain)",
                basename="flatten")
    for image in plan.images:
        name = f"flatten:{image.name}"
        yield {
            "name": image.name,
            "basename": "flatten",
            "doc": f"flatten the {len(image.chain)} layers of {image.spec.ref_text} "
                   f"(chain {image.chain_key[:12]})",
            "actions": [action(flatten_step, ctx, image, name=name, images=[image.name])],
            "task_dep": [f"unpack:{digest}" for digest in dict.fromkeys(image.chain)],
            "uptodate": [config_changed(flatten_config(image)),
                         (flat_finished, [ctx.cache.flat_root, image.chain_key], {})],
            "clean": [(remove_path, [ctx.cache.flat_root / image.chain_key])],
            "io": IO,
            "meta": {"images": [image.name]},
        }
