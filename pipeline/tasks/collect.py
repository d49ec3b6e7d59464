"""``doit collect``: the fan-in job. Is every image of the manifest in the remote cache?

For each image of the manifest, the cache key is computed from the lock file
(as the shards did) and the entry ``rk-<key>`` is read: its manifest and
config, the config's key and material checked against the local ones, no
chunk downloaded. ``out/index.json`` then maps each image found to its
artifact digest, ext4 sha256 and size (sorted, written atomically), and the
task fails naming every image that is missing (not resolved, no entry, or an
entry for another key). ``doit collect fetch=1`` also downloads every image
into ``out/`` (verified, as a cache hit is), skipping one already there.

The key covers the builder: the native writer's format version, or for
``builder = "mkfs"`` images the e2fsprogs versions, so for those the collect
job must run with the same toolchain as the jobs that built (the same CI image).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import structlog

from pipeline.base.escape import escape_text
from pipeline.base.files import write_atomic
from pipeline.errors import PipelineError
from pipeline.project.buildrecord import read_record, record_path_for
from pipeline.project.lockfile import read_lock
from pipeline.tasks.context import RunContext
from pipeline.tasks.mkfs import mkfs_config, output_path
from pipeline.tasks.plan import ImagePlan, plan_run
from pipeline.tasks.remote import cache_entry, image_built, write_fetched
from pipeline.tasks.steps import IO, note, run_step
from pipeline.tasks.toolcache import versions_used

__all__ = ["INDEX_NAME", "collect_step", "collect_task"]

log = structlog.get_logger(__name__)

INDEX_NAME = "index.json"
# The failure line names this many missing images; the log lists each one.
_NAMED = 20


def collect_step(ctx: RunContext, fetch: bool) -> None:
    remote = ctx.manifest.remote
    if remote is None:
        raise PipelineError(f"{ctx.manifest.path}: `doit collect` needs a remote cache; set "
                            "[cache] remote = \"<registry>/<repository>\" or "
                            "ROOTFS_REMOTE_CACHE")
    from pipeline.errors import DigestMismatch, RegistryError, RemoteArtifactError
    from pipeline.remote.fetch import find_artifact

    plan = plan_run(ctx.manifest, read_lock(ctx.lock_path))
    tools = versions_used(ctx.cache.root, {image.spec.ext4.builder for image in plan.images})
    missing = {name: "not resolved in the lock file (run `doit resolve`)"
               for name in plan.unresolved}
    index: dict[str, Any] = {}
    client = ctx.registries.client()
    fetched = 0
    for image in plan.images:
        entry = cache_entry(image, tools)
        material, key, tag = entry.material, entry.key, entry.tag
        try:
            found = find_artifact(client, remote.registry, remote.repository, tag, key=key,
                                  material=material)
            if fetch and not _have(ctx, image, tools, found.sha256):
                write_fetched(ctx, image, tools, remote, tag, key, material)
                fetched += 1
        except (RegistryError, RemoteArtifactError, DigestMismatch) as err:
            reason = "no entry" if getattr(err, "status", None) == 404 else str(err)
            missing[image.name] = escape_text(reason, 300)
            log.warning("collect.missing", image=image.name, tag=tag[:15],
                        reason=missing[image.name])
            continue
        index[image.name] = {"artifact": str(found.digest), "sha256": found.sha256,
                             "size": found.size}
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(dict(sorted(index.items())), indent=2, sort_keys=True) + "\n"
    write_atomic(ctx.output_dir / INDEX_NAME, text.encode())
    note(found=len(index), missing=len(missing), fetched=fetched,
         index=str(ctx.output_dir / INDEX_NAME))
    if missing:
        names = sorted(missing)
        shown = ", ".join(f"{n} ({missing[n]})" for n in names[:_NAMED])
        more = f" and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
        raise PipelineError(f"{len(names)} of {len(ctx.manifest.images)} images are not in the "
                            f"remote cache {remote}: {shown}{more}; build them with push on "
                            "(plain `doit`) and collect again")


def _have(ctx: RunContext, image: ImagePlan, tools: Mapping[str, str], sha256: str) -> bool:
    """out/<name>.ext4 is already this entry's image."""
    if not image_built(ctx, image, mkfs_config(image, tools)):
        return False
    record = read_record(record_path_for(output_path(ctx, image.name)))
    return record is not None and record.get("sha256") == sha256


def collect_task(ctx: RunContext, fetch: bool) -> dict[str, Any]:
    what = "and download every image into out/" if fetch else "(fetch=1 also downloads them)"
    return {
        "doc": f"check every image is in the remote cache, write out/{INDEX_NAME} {what}",
        "actions": [(run_step, [collect_step, ctx, fetch],
                     {"name": "collect", "images": []})],
        "uptodate": [False],
        "io": IO,
        "meta": {"images": []},
    }
