"""Task ``gc``: drop cache entries that no image in the manifest references.

Kept: the blobs (layers and config), layer stores and flat images of every
lock entry of an image still in the manifest, and for an image its mkfs step
derives (``ext4derive.choose_build``, from its layer stores' stats) the base
image and the base chain's flat image it derives from. Everything else under
``blobs/``, ``layers/``, ``flat/`` and ``base/`` goes, including leftovers of
killed runs. The step takes the cache exclusively, so within one run it waits for
build steps to finish and none starts under it; the run lock keeps other
processes out. ``doit gc --dry-run`` only lists what would go.
"""

from __future__ import annotations

from typing import Any

import structlog

from pipeline.base.terminal import format_bytes
from pipeline.errors import LayerError, PipelineError, ToolError
from pipeline.ext4.options import Ext4Options
from pipeline.flat.image import chain_key
from pipeline.project.gc import Keep, collect
from pipeline.project.lockfile import read_lock
from pipeline.tasks.context import RunContext
from pipeline.tasks.steps import IO, run_step
from pipeline.tasks.toolcache import cached_tool_versions

__all__ = ["gc_task", "gc_step", "keep_for"]

log = structlog.get_logger(__name__)


def keep_for(ctx: RunContext) -> Keep:
    entries = read_lock(ctx.lock_path)
    blobs, layers, chains, bases = [], [], [], []
    keep_all_bases = False
    for spec in ctx.manifest.images:
        entry = entries.get(spec.name)
        if entry is None:
            continue
        resolved = entry.resolved
        blobs.append(resolved.config.digest)
        blobs += [layer.digest for layer in resolved.layers]
        layers += [layer.digest for layer in resolved.layers]
        chain = [str(layer.digest) for layer in resolved.layers]
        chains.append(chain_key(chain))
        try:
            base = _base_of(ctx, chain, spec.ext4)
        except ToolError as err:
            # Without the tool versions no base key can be worked out: keep them all.
            log.warning("gc.keeps_all_bases", reason=str(err))
            keep_all_bases = True
            continue
        if base is not None:
            chains.append(base[0])
            bases.append(base[1])
    return Keep.of(blobs=blobs, layers=layers, chains=chains,
                   bases=None if keep_all_bases else bases)


def _base_of(ctx: RunContext, chain: list[str], options: Ext4Options) -> tuple[str, str] | None:
    """(flat image chain key, base key) of the base the image's mkfs step derives from,
    or None when it builds in full or its layer stores are gone (then nothing of it
    is worth keeping: a new build unpacks, flattens and builds its base again)."""
    from pipeline.ext4.derive.build import DerivedBuild, choose_build, layer_stats

    try:
        stats = layer_stats(ctx.cache.layers_root, chain)
    except LayerError:
        return None
    plan = choose_build(stats, options, cached_tool_versions(ctx.cache.root))
    if not isinstance(plan, DerivedBuild):
        return None
    return chain_key(plan.base_chain), plan.base_key


def gc_step(ctx: RunContext, dry_run: bool) -> None:
    result = collect(ctx.cache, keep_for(ctx), dry_run=dry_run)
    for path in result.removed:
        log.info("gc.would_remove" if dry_run else "removed", path=str(path))
    log.info("gc.collected", dry_run=dry_run, removed=len(result.removed), kept=result.kept,
             freed=format_bytes(result.freed_bytes))
    if result.errors:
        raise PipelineError(f"gc: {len(result.errors)} entries could not be removed, first: "
                            f"{result.errors[0]}")


def gc_action(ctx: RunContext, dry_run: bool) -> Any:
    """doit passes ``dry_run`` from ``doit gc --dry-run``."""
    return run_step(gc_step, ctx, dry_run, name="gc", images=[], exclusive=True)


def gc_task(ctx: RunContext) -> dict[str, Any]:
    return {
        "doc": f"remove cached blobs, layers, flat and base images no image in "
               f"{ctx.manifest.path.name} references (--dry-run to list them)",
        "actions": [(gc_action, [ctx], {})],
        "params": [{"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
                    "help": "list what would be removed, remove nothing"}],
        "uptodate": [False],
        "io": IO,
        "meta": {"images": []},
    }
