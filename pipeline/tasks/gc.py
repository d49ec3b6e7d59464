"""Task ``gc``: drop cache entries that no image in the manifest references.

Kept: the blobs (layers and config), layer stores and flat images of every
lock entry of an image still in the manifest. Everything else under
``blobs/``, ``layers/`` and ``flat/`` goes, including leftovers of killed
runs. The step takes the cache exclusively, so within one run it waits for
build steps to finish and none starts under it; the run lock keeps other
processes out. ``doit gc --dry-run`` only lists what would go.
"""

from __future__ import annotations

from typing import Any

import structlog

from ..errors import PipelineError
from ..flatimage import chain_key
from ..gc import Keep, collect
from ..lockfile import read_lock
from ..progress import format_bytes
from .context import RunContext
from .steps import IO, run_step

__all__ = ["gc_task", "gc_step", "keep_for"]

log = structlog.get_logger(__name__)


def keep_for(ctx: RunContext) -> Keep:
    entries = read_lock(ctx.lock_path)
    blobs, layers, chains = [], [], []
    for spec in ctx.manifest.images:
        entry = entries.get(spec.name)
        if entry is None:
            continue
        resolved = entry.resolved
        blobs.append(resolved.config.digest)
        blobs += [layer.digest for layer in resolved.layers]
        layers += [layer.digest for layer in resolved.layers]
        chains.append(chain_key([str(layer.digest) for layer in resolved.layers]))
    return Keep.of(blobs=blobs, layers=layers, chains=chains)


def gc_step(ctx: RunContext, dry_run: bool) -> None:
    result = collect(ctx.cache_dir, keep_for(ctx), dry_run=dry_run)
    for path in result.removed:
        log.info("would remove" if dry_run else "removed", path=str(path))
    log.info("cache collected", dry_run=dry_run, removed=len(result.removed), kept=result.kept,
             freed=format_bytes(result.freed_bytes))
    if result.errors:
        raise PipelineError(f"gc: {len(result.errors)} entries could not be removed, first: "
                            f"{result.errors[0]}")


def gc_action(ctx: RunContext, dry_run: bool) -> Any:
    """doit passes ``dry_run`` from ``doit gc --dry-run``."""
    return run_step(gc_step, ctx, dry_run, name="gc", images=[], exclusive=True)


def gc_task(ctx: RunContext) -> dict[str, Any]:
    return {
        "doc": f"remove cached blobs, layers and flat images no image in "
               f"{ctx.manifest.path.name} references (--dry-run to list them)",
        "actions": [(gc_action, [ctx], {})],
        "params": [{"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
                    "help": "list what would be removed, remove nothing"}],
        "uptodate": [False],
        "io": IO,
        "meta": {"images": []},
    }
