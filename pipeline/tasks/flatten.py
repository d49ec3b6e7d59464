"""Task family ``flatten:<image>``: the image's layers replayed into a flat image.

Keyed by the ordered layer digests (``flatimage.chain_key``): up to date
means a finished flat image for that chain exists (its header, written last,
is there). Two images with the same layers in the same order share one flat
image; a per-chain lock keeps their two flatten tasks from doing the work
twice when they run in parallel. Flattening is pure Python: beside another
such job it runs in a worker process (``RunContext.run_job``).

An image with ``config_path`` has one more layer on top of its own: the
runtime config file (``layers.configfile``), written here from the flat image
of the image's own layers (flattened first: its /etc/passwd resolves the
user), so the flat image, and both ext4 builders, carry the file.

Only an image built with ``builder = "mkfs"`` needs the staging tree: its
task asks for it (and adds it to a flat image made without one); the native
builder reads the layer stores directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doit.tools import config_changed

from pipeline.base.digest import Digest
from pipeline.base.files import remove_path
from pipeline.flat.image import ROOTFS_NAME, chain_key, is_current
from pipeline.layers.configfile import write_config_layer
from pipeline.layers.store import LayerStore
from pipeline.oci.runtime import render_runtime
from pipeline.tasks.context import RunContext
from pipeline.tasks.plan import ImagePlan, RunPlan
from pipeline.tasks.steps import IO, action, group, note
from pipeline.tasks.unpack import check_diff_id

__all__ = ["flatten_tasks", "flatten_step", "flat_finished", "flatten_config"]


def flatten_config(image: ImagePlan) -> dict[str, Any]:
    return {"chain": list(image.chain), "staging": needs_staging(image)}


def needs_staging(image: ImagePlan) -> bool:
    """Whether the image's builder reads a staging tree (mkfs.ext4 -d does)."""
    return image.spec.ext4.builder == "mkfs"


def flat_finished(flat_root: Path, chain_key: str, staging: bool = False) -> bool:
    """doit uptodate: the finished flat image of this format for this chain exists, with
    its staging tree when ``staging``."""
    flat = flat_root / chain_key
    return is_current(flat) and (not staging or (flat / ROOTFS_NAME).is_dir())


def flatten_step(ctx: RunContext, image: ImagePlan) -> None:
    from pipeline.tasks.jobs import (
        flatten_job,  # the flattener loads only when an image is flattened
    )

    for layer in image.resolved.layers:
        check_diff_id(LayerStore.open(ctx.cache.layers_root, layer.digest), layer)
    if image.config_layer is not None:
        _write_config_layer(ctx, image, image.config_layer)
    with ctx.chain_lock(image.chain_key):
        # Pure Python from end to end: beside another job, a worker process runs it.
        flat = ctx.run_job(flatten_job, ctx.cache, list(image.chain), needs_staging(image))
    note(flat=str(flat), layers=len(image.chain))


def _write_config_layer(ctx: RunContext, image: ImagePlan, key: Digest) -> None:
    """The ``config_path`` file's layer store: the runtime config as read from the flat
    image of the image's own layers (its /etc/passwd resolves the user)."""
    from pipeline.tasks.jobs import flatten_job
    from pipeline.tasks.runtime import runtime_config

    assert image.spec.config_path is not None
    with ctx.chain_lock(chain_key(image.layer_chain)):
        layers_flat = ctx.run_job(flatten_job, ctx.cache, list(image.layer_chain), False)
    data = render_runtime(runtime_config(ctx, image, layers_flat))
    write_config_layer(ctx.cache.layers_root, key, image.spec.config_path, data)


def flatten_tasks(ctx: RunContext, plan: RunPlan) -> Iterator[dict[str, Any]]:
    yield group("flatten each image's layers into a flat image (once per layer chain)",
                basename="flatten")
    for image in plan.images:
        name = f"flatten:{image.name}"
        yield {
            "name": image.name,
            "basename": "flatten",
            "doc": f"flatten the {len(image.chain)} layers of {image.spec.ref_text} "
                   f"(chain {image.chain_key[:12]})",
            "actions": [action(flatten_step, ctx, image, name=name, images=[image.name])],
            "task_dep": [f"unpack:{digest}" for digest in dict.fromkeys(image.layer_chain)],
            "uptodate": [config_changed(flatten_config(image)),
                         (flat_finished, [ctx.cache.flat_root, image.chain_key,
                                          needs_staging(image)], {})],
            "clean": [(remove_path, [ctx.cache.flat_root / image.chain_key])],
            "io": IO,
            "meta": {"images": [image.name]},
        }
