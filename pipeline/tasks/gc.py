"""Task ``gc``: drop cache entries that no image of any manifest using the cache references.

Kept: the blobs (layers and config), layer stores and flat images of every
lock entry of an image still in the manifest, and in every other manifest
registered in the cache directory (``project.sharing``: each manifest that
builds in a cache registers there). Everything else under ``blobs/``,
``layers/`` and ``flat/`` goes, including leftovers of killed runs, and so
does everything under ``base/`` (the base images of derived builds, which
older versions made and this one never reads). The step takes the cache
exclusively, so within one run it waits for build steps to finish and none
starts under it; the run lock keeps other processes out. ``doit gc
--dry-run`` only lists what would go: one line per entry with its kind, bytes
and the images that last used it (``project.owners``: recorded whenever an
image's roots leave a lock; the locks of every manifest add their own images;
"no image" when nobody ever said), one line per group of images and kind, and
the total, which is what the real run frees (``collect`` measures every entry
before removing any).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from pipeline.base.terminal import format_bytes
from pipeline.errors import PipelineError
from pipeline.flat.image import chain_key
from pipeline.layers.configfile import config_layer_key
from pipeline.project.config import Manifest, load_manifest
from pipeline.project.gc import Keep, collect
from pipeline.project.lockfile import LockEntry, read_lock
from pipeline.project.owners import (
    Owner,
    compact_owners,
    entries_used,
    read_owners,
    record_owners,
)
from pipeline.project.sharing import registered_manifests
from pipeline.tasks.context import RunContext
from pipeline.tasks.steps import IO, run_step

__all__ = ["gc_task", "gc_step", "keep_for", "record_former", "owners_for", "NO_IMAGE"]

log = structlog.get_logger(__name__)


def _manifests(ctx: RunContext) -> list[Manifest]:
    """This run's manifest and every other registered one that uses this very cache."""
    found = [ctx.manifest]
    own = ctx.cache.root.resolve()
    for path in registered_manifests(ctx.cache.root):
        if path == ctx.manifest.path.resolve():
            continue
        try:
            other = load_manifest(path)
        except PipelineError as err:
            raise PipelineError(f"gc: {path} is registered in {own} but cannot be read, so"
                                f" what it uses is unknown ({err}); fix it, or remove"
                                f" {own}/manifests/ entries naming it if it no longer uses"
                                " this cache") from None
        if other.settings.cache_dir.resolve() != own:
            continue  # it moved to another cache since it registered
        log.info("gc.keeps_manifest", manifest=str(path), images=len(other.images))
        found.append(other)
    return found


def keep_for(ctx: RunContext, manifests: list[Manifest] | None = None) -> Keep:
    blobs, layers, chains = [], [], []
    every = _manifests(ctx) if manifests is None else manifests
    for manifest in every:
        # One read per lock: read_lock copies its entries, and a manifest has thousands.
        locked = read_lock(manifest.lock_path)
        for spec in manifest.images:
            entry = locked.get(spec.name)
            if entry is None:
                continue
            resolved = entry.resolved
            blobs.append(resolved.config.digest)
            blobs += [layer.digest for layer in resolved.layers]
            layers += [layer.digest for layer in resolved.layers]
            chain = [str(layer.digest) for layer in resolved.layers]
            chains.append(chain_key(chain))
            if spec.config_path is not None:
                # The config file's layer store sits on top: keep it and the chain with it.
                extra = config_layer_key(resolved.config.digest, chain, spec.config_path)
                layers.append(extra)
                chains.append(chain_key([*chain, str(extra)]))
    return Keep.of(blobs=blobs, layers=layers, chains=chains)


def record_former(ctx: RunContext, former: Mapping[str, LockEntry]) -> None:
    """Remember the cache entries of lock entries about to be replaced or dropped."""
    specs = {spec.name: spec for spec in ctx.manifest.images}
    manifest = str(ctx.manifest.path.resolve())
    record_owners(ctx.cache.root, {
        (manifest, name): entries_used(entry.resolved, getattr(specs.get(name), "config_path",
                                                               None))
        for name, entry in former.items()})


def owners_for(ctx: RunContext, manifests: list[Manifest]) -> dict[str, list[Owner]]:
    """Each known entry's last users: what was recorded, then every lock entry of every
    manifest (an image removed from its manifest still has one until the next build)."""
    owners = read_owners(ctx.cache.root)
    for manifest in manifests:
        path = str(manifest.path.resolve())
        specs = {spec.name: spec for spec in manifest.images}
        for name, entry in read_lock(manifest.lock_path).items():
            config_path = getattr(specs.get(name), "config_path", None)
            for used in entries_used(entry.resolved, config_path):
                users = owners.setdefault(used, [])
                if (path, name) not in users:
                    users.append((path, name))
    return owners


def gc_step(ctx: RunContext, dry_run: bool) -> None:
    manifests = _manifests(ctx)
    keep = keep_for(ctx, manifests)
    owners = owners_for(ctx, manifests)
    result = collect(ctx.cache, keep, dry_run=dry_run)
    by_kind: dict[str, int] = {}
    groups: dict[tuple[str, str], list[int]] = {}
    entries = [_short(ctx.cache.root, Path(path)) for path in result.removed]
    for entry, kind, size in zip(entries, result.kinds, result.sizes):
        by_kind[kind] = by_kind.get(kind, 0) + size
        images = _labels(ctx, owners.get(entry, []))
        log.info("gc.would_remove" if dry_run else "gc.removed", kind=kind, entry=entry,
                 bytes=size, images=images)
        group = groups.setdefault((", ".join(images) or NO_IMAGE, kind), [0, 0])
        group[0] += 1
        group[1] += size
    # By image (the images that last used an entry, together) and kind: each entry is
    # in exactly one group, so the groups add up to what is freed.
    for (images_text, kind), (count, size) in sorted(groups.items()):
        log.info("gc.by_image", images=images_text, kind=kind, entries=count, bytes=size,
                 dry_run=dry_run)
    log.info("gc.collected", dry_run=dry_run, removed=len(result.removed), kept=result.kept,
             freed_bytes=result.freed_bytes, freed=format_bytes(result.freed_bytes),
             bytes_by_kind=by_kind)
    if not dry_run:
        compact_owners(ctx.cache.root, removed=entries)
    if result.errors:
        raise PipelineError(f"gc: {len(result.errors)} entries could not be removed, first: "
                            f"{result.errors[0]}")


NO_IMAGE = "no image"


def _labels(ctx: RunContext, users: list[Owner]) -> list[str]:
    """Image names; an image of another manifest names it too."""
    own = str(ctx.manifest.path.resolve())
    return sorted({image if manifest == own else f"{image} ({manifest})"
                   for manifest, image in users})


def _short(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


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
