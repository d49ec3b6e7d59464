"""Task family ``prune:<name>``: an image removed from the manifest loses its lock entry
and its outputs on the next run, with one log line each.

Without it, a removed image's ``out/<name>.ext4`` stays beside the images
still declared (a CI uploading ``out/*`` ships it) and its lock entry lives
on until some other image's resolve rewrites the lock. A task exists only
for a lock entry whose name is not in the manifest, so a run with nothing
removed has no such task at all.

Only files the pipeline wrote are removed: ``out/<name>.ext4`` when the
record ``out/<name>.json`` beside it names that image, then the record. In
frozen mode the lock is never written (CI must not change it): the entry
stays and the log line says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog

from pipeline.project.buildrecord import read_record, record_path_for
from pipeline.project.lockfile import LockEntry, read_lock, update_lock
from pipeline.tasks.context import RunContext
from pipeline.tasks.gc import record_former
from pipeline.tasks.steps import IO, action, group, note

__all__ = ["prune_tasks", "prune_step", "removed_images"]

log = structlog.get_logger(__name__)


def removed_images(ctx: RunContext) -> list[str]:
    """Names in the lock that the manifest no longer declares."""
    declared = {spec.name for spec in ctx.manifest.images}
    return sorted(name for name in read_lock(ctx.lock_path) if name not in declared)


def prune_step(ctx: RunContext, name: str) -> None:
    output = ctx.output_dir / f"{name}.ext4"
    record = record_path_for(output)
    found = read_record(record)
    removed = []
    if found is not None and found.get("name") == name:
        for path in (output, record):
            if path.exists():
                path.unlink()
                removed.append(path.name)
    if ctx.frozen:
        note(outcome="outputs removed; frozen mode keeps the lock entry", removed=removed)
        return

    def drop(entries: dict[str, LockEntry]) -> dict[str, LockEntry]:
        if name in entries:
            record_former(ctx, {name: entries.pop(name)})
        return entries

    update_lock(ctx.lock_path, drop)
    note(outcome="removed from the manifest: lock entry and outputs removed", removed=removed)


def prune_tasks(ctx: RunContext) -> Iterator[dict[str, Any]]:
    yield group("forget images removed from the manifest (lock entry, outputs)",
                basename="prune")
    for name in removed_images(ctx):
        yield {
            "basename": "prune",
            "name": name,
            "doc": f"image {name!r} is no longer in {ctx.manifest.path.name}: drop its lock"
                   " entry and outputs",
            "actions": [action(prune_step, ctx, name, name=f"prune:{name}", images=[])],
            "uptodate": [False],
            "io": IO,
            "meta": {"images": []},
        }
