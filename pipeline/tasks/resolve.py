"""Task family ``resolve:<image>``, and ``update``: references into the lock file.

``resolve:<image>`` is up to date while the lock holds an entry resolved
from the same reference text and platform, so a build needs no registry
round trip for resolution; a new image or a changed reference is resolved
in the same run, before the build tasks are created from the lock.

Unlike the other families this one has no doit ``config_changed``: its
config (reference and platform) is stored *in the lock entry*, which is the
state that matters. A fresh clone with a committed lock and no doit database
must not resolve again: that would silently move floating tags.

``update`` re-resolves every image (floating tags such as ``latest`` move
upstream) and rewrites the lock; the next ``doit`` rebuilds what changed.
A tag whose HEAD still names the locked digest is not pulled again.

In frozen mode (CI) nothing is resolved: a missing or stale entry is an
error, checked when the tasks load (``check_frozen``).

Mirrors are tried first, in order, then the registry; the lock always
records the upstream registry, so a lock made through a CI mirror works on
a laptop and back.

A local source (``oci:``, ``oci-archive:``, ``docker-archive:``) is read
instead of a registry (``local.source``). Its lock entry also records the
source's identity; ``resolve:<image>`` is up to date only while the layout
or archive still names that identity (``probe_local`` reads index.json or
manifest.json and the tar headers, no layer), so a rebuilt archive is
resolved again on the next run, and ``doit update`` keeps an unchanged one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from pipeline.errors import LockError, PipelineError
from pipeline.oci.localref import LocalRef
from pipeline.oci.resolved import ResolvedImage
from pipeline.project.config import ImageSpec
from pipeline.project.lockfile import LockEntry, lock_entry, read_lock, update_lock
from pipeline.registry.sources import Source
from pipeline.tasks.context import RunContext
from pipeline.tasks.gc import record_former

if TYPE_CHECKING:
    from pipeline.base.digest import Digest
    from pipeline.registry.client import RegistryClient
from pipeline.tasks.plan import current_entry
from pipeline.tasks.steps import IO, action, group, note

__all__ = ["resolve_tasks", "update_task", "resolve_spec", "resolve_step", "update_step",
           "lock_is_current", "check_frozen", "resolve_config", "still_locked",
           "local_unchanged"]

log = structlog.get_logger(__name__)


def resolve_config(spec: ImageSpec) -> dict[str, Any]:
    """Everything that decides a lock entry: the reference as written and the platform."""
    return {"ref": spec.ref_text, "platform": str(spec.platform)}


def lock_is_current(lock_path: Path, name: str, ref: str, platform: str,
                    base: Path | None = None) -> bool:
    """doit uptodate: the lock's entry for ``name`` was resolved from ``ref`` and ``platform``
    (and, for a local source under ``base``, the source still holds that image)."""
    entry = lock_entry(lock_path, name)
    if entry is None or not entry.matches(ref, platform):
        return False
    return base is None or local_unchanged(entry.resolved, base)


def local_unchanged(resolved: ResolvedImage, base: Path) -> bool:
    """True for a registry entry, or a local one whose source still has its identity."""
    local = resolved.local
    if local is None:
        return True
    from pipeline.local.source import probe_local

    try:
        return probe_local(local, base) == resolved.identity
    except PipelineError as err:  # the resolve step says it properly
        log.debug("resolve.probe_failed", ref=str(local), error=str(err))
        return False


def _resolve_local(ctx: RunContext, spec: ImageSpec, ref: LocalRef) -> ResolvedImage:
    from pipeline.local.source import open_blob, resolve_local

    base = ctx.manifest.path.parent
    resolved = resolve_local(ref, base, spec.platform)
    config = resolved.config
    # The config goes to the blob cache as a registry's does: mkfs reads it there.
    ctx.cache.blobs.ingest(config.digest, config.size,
                           lambda: open_blob(ref, base, config.digest, config.size),
                           what=str(ref))
    return resolved


def resolve_spec(ctx: RunContext, spec: ImageSpec) -> ResolvedImage:
    """Resolve one image through its mirrors, then its registry; record the upstream."""
    ref = spec.ref
    if isinstance(ref, LocalRef):
        return _resolve_local(ctx, spec, ref)
    # Imported here: only a run that resolves pays for the registry side.
    from pipeline.registry.resolve import resolve_image

    def attempt(client: RegistryClient, source: Source) -> ResolvedImage:
        return resolve_image(client, source.ask_for(ref), spec.platform, ctx.cache.blobs)

    resolved = ctx.registries.first_success(ctx.registries.sources(ref.registry, ref.repository),
                                f"image {spec.name!r} ({spec.ref_text})", attempt)
    return dataclasses.replace(resolved, ref=ref, registry=ref.registry,
                               repository=ref.repository)


def still_locked(ctx: RunContext, spec: ImageSpec,
                 entry: LockEntry | None) -> ResolvedImage | None:
    """The lock's resolution of ``spec`` when the registry still serves it; else None.

    A HEAD (mirrors first, like a resolve) answers whether the tag still
    names the pinned digest: Docker Hub does not count HEADs against its pull
    limit, so `doit update` of tags that have not moved pulls nothing. Any
    doubt (no lock entry for this reference, no digest header, any error)
    answers None and the caller resolves in full, which also reports errors
    properly.
    """
    if entry is None or not entry.matches(spec.ref_text, str(spec.platform)):
        return None
    ref = spec.ref
    if isinstance(ref, LocalRef):
        base = ctx.manifest.path.parent
        return entry.resolved if local_unchanged(entry.resolved, base) else None
    from pipeline.registry.resolve import head_digest

    pinned = entry.resolved.index_digest or entry.resolved.manifest_digest
    if ref.digest is not None:  # a digest reference cannot move
        return entry.resolved if ref.digest == pinned else None

    def attempt(client: RegistryClient, source: Source) -> Digest | None:
        return head_digest(client, source.ask_for(ref))

    try:
        current = ctx.registries.first_success(ctx.registries.sources(ref.registry, ref.repository),
                                   f"image {spec.name!r} ({spec.ref_text})", attempt)
    except PipelineError as err:
        log.debug("resolve.head_failed", image=spec.name, error=str(err))
        return None
    return entry.resolved if current == pinned else None


def _store(ctx: RunContext, new: dict[str, LockEntry]) -> None:
    specs = {spec.name: spec for spec in ctx.manifest.images}

    def change(entries: dict[str, LockEntry]) -> dict[str, LockEntry]:
        # Roots leaving the lock are remembered, so gc can say whose they were
        # (under the lock's own path lock: one writer at a time).
        former = {name: old for name, old in entries.items()
                  if name not in specs or (name in new and new[name] != old)}
        record_former(ctx, former)
        entries.update(new)
        # Entries of images no longer in the manifest go with the next write.
        return {name: entry for name, entry in entries.items() if name in specs}

    if update_lock(ctx.lock_path, change):
        log.debug("lock.written", path=str(ctx.lock_path), images=sorted(new))


def _entry(spec: ImageSpec, resolved: ResolvedImage) -> LockEntry:
    return LockEntry(ref=spec.ref_text, platform=str(spec.platform), resolved=resolved)


def resolve_step(ctx: RunContext, spec: ImageSpec) -> None:
    if ctx.frozen:
        raise LockError(f"{ctx.lock_path}: frozen mode: image {spec.name!r} would need "
                        "resolving; run `doit` without frozen mode and commit the lock")
    resolved = resolve_spec(ctx, spec)
    _store(ctx, {spec.name: _entry(spec, resolved)})
    note(ref=spec.ref_text, manifest=str(resolved.manifest_digest),
         layers=len(resolved.layers), platform=str(resolved.platform))


def update_step(ctx: RunContext, specs: Sequence[ImageSpec]) -> None:
    """Re-resolve ``specs`` in parallel; write what worked, then fail for what did not."""
    if ctx.frozen:
        raise LockError("frozen mode: `doit update` would rewrite the lock; run it without "
                        "frozen mode")
    before = read_lock(ctx.lock_path)
    unmoved: list[str] = []

    def one(spec: ImageSpec) -> ResolvedImage:
        locked = still_locked(ctx, spec, before.get(spec.name))
        if locked is not None:
            unmoved.append(spec.name)
            return locked
        return resolve_spec(ctx, spec)

    results: dict[str, LockEntry] = {}
    failures: list[str] = []
    with ThreadPoolExecutor(max_workers=ctx.manifest.settings.jobs) as pool:
        futures = {spec.name: (spec, pool.submit(one, spec)) for spec in specs}
        for name, (spec, future) in futures.items():
            try:
                results[name] = _entry(spec, future.result())
            except PipelineError as err:
                failures.append(f"{name}: {err}")
    changed = sorted(name for name, entry in results.items()
                     if name not in before or before[name].resolved != entry.resolved)
    _store(ctx, results)
    note(resolved=len(results), changed=changed, unmoved_by_head=len(unmoved))
    if failures:
        raise LockError(f"update: {len(failures)} of {len(specs)} images could not be "
                        f"resolved (the others were updated): {'; '.join(failures)}")


def resolve_tasks(ctx: RunContext) -> Iterator[dict[str, Any]]:
    yield group(f"resolve every image reference into {ctx.lock_path.name} (only new or "
                "changed ones touch the registry)")
    for spec in ctx.images:
        config = resolve_config(spec)
        name = f"resolve:{spec.name}"
        yield {
            "name": spec.name,
            "doc": f"resolve {spec.ref_text} for {spec.platform} into {ctx.lock_path.name}",
            "actions": [action(resolve_step, ctx, spec, name=name, images=[spec.name])],
            "uptodate": [(lock_is_current, [ctx.lock_path, spec.name, config["ref"],
                                            config["platform"], _local_base(ctx, spec)], {})],
            "io": IO,
            "meta": {"images": [spec.name]},
        }


def _local_base(ctx: RunContext, spec: ImageSpec) -> Path | None:
    """Where a local source's relative path starts (None for a registry image)."""
    return ctx.manifest.path.parent if isinstance(spec.ref, LocalRef) else None


def update_task(ctx: RunContext) -> dict[str, Any]:
    specs = list(ctx.manifest.images)
    return {
        "doc": f"re-resolve every image (floating tags) and rewrite {ctx.lock_path.name}; "
               "then run doit to rebuild what changed",
        "actions": [action(update_step, ctx, specs, name="update",
                           images=[s.name for s in specs])],
        "uptodate": [False],
        "io": IO,
        "meta": {"images": [s.name for s in specs]},
    }


def check_frozen(ctx: RunContext) -> None:
    """Frozen mode: every image must have a current lock entry before anything runs."""
    entries = read_lock(ctx.lock_path)
    if not entries and not ctx.lock_path.exists():
        raise LockError(f"{ctx.lock_path}: frozen mode: the lock file is missing; run `doit` "
                        "without frozen mode and commit it")
    for spec in ctx.images:
        current = current_entry(spec, entries)
        if current is not None and local_unchanged(current.resolved, ctx.manifest.path.parent):
            continue
        found = entries.get(spec.name)
        if found is None:
            detail = "has no entry"
        elif current is not None:
            detail = (f"is stale: {spec.ref_text!r} no longer holds the locked image "
                      f"{found.resolved.identity} (or cannot be read)")
        else:
            detail = (f"is stale: locked {found.ref!r} for {found.platform}, the manifest "
                      f"says {spec.ref_text!r} for {spec.platform}")
        raise LockError(f"{ctx.lock_path}: frozen mode: image {spec.name!r} {detail}; run "
                        "`doit` without frozen mode and commit the lock")
