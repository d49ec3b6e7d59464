"""After ``mkfs:<image>``: push the image to the remote cache, publish it.

With a remote cache whose ``push`` is on, or an image with ``publish``, the
``mkfs:<image>`` task's step is ``share_step``: the build as always
(``mkfs_step``, which finds a cache hit already built), then

- push: an image built here goes to the cache under ``rk-<key>``
  (``remote.artifact.push_artifact``: blobs first, HEAD and mount before
  any upload, the manifest last). An image that came from this very cache
  is not pushed back. An entry this run found damaged is pushed as a repair
  (chunks with new digests: a registry never replaces a stored blob).
- publish: the artifact under the image's ``publish`` reference, its blobs
  mounted from the cache repository when both are on one registry.

What was shared is kept in doit's values (``{"shared": [...]}``), and the
task is up to date only while those match the output's sha256 and the
current settings (``SharedUpToDate``): turning push on, or a new publish
tag, shares what is already built without building it again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import structlog

from pipeline.oci.reference import ImageRef
from pipeline.project.buildrecord import read_record, record_path_for
from pipeline.project.config.remote import RemoteCache
from pipeline.tasks.context import RunContext
from pipeline.tasks.mkfs import mkfs_step, output_path
from pipeline.tasks.plan import ImagePlan, RunPlan
from pipeline.tasks.remote import RECORD_EXTRAS, cache_entry
from pipeline.tasks.steps import action, note

__all__ = ["share_step", "shared_plan", "SharedUpToDate", "sharing_tasks"]

log = structlog.get_logger(__name__)


def shared_plan(ctx: RunContext, image: ImagePlan, sha256: str) -> list[str]:
    """What sharing ``image`` with this sha256 means under the current settings."""
    remote = ctx.manifest.remote
    wanted = []
    if remote is not None and remote.push:
        wanted.append(f"cache {remote} {sha256}")
    if image.spec.publish is not None:
        wanted.append(f"publish {image.spec.publish} {sha256}")
    return wanted


class SharedUpToDate:
    """doit uptodate: what ``share_step`` last shared is the current output, as now asked."""

    def __init__(self, ctx: RunContext, image: ImagePlan) -> None:
        self.ctx, self.image = ctx, image

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        record = read_record(record_path_for(output_path(self.ctx, self.image.name)))
        if record is None or not isinstance(record.get("sha256"), str):
            return False
        return values.get("shared") == shared_plan(self.ctx, self.image, record["sha256"])

    def __str__(self) -> str:
        return "would share: the output is not yet pushed or published as configured"


def _from_cache(remote: RemoteCache, record: Mapping[str, Any]) -> str | None:
    """The artifact digest when the output was fetched from this very cache, else None."""
    came = record.get("remote_cache")
    if isinstance(came, dict) and came.get("repository") == str(remote):
        digest = came.get("digest")
        return digest if isinstance(digest, str) else None
    return None


def _push(ctx: RunContext, image: ImagePlan, tools: Mapping[str, str], remote: RemoteCache,
          record: Mapping[str, Any]) -> str | None:
    """Push a local build to the cache; the artifact digest in the cache (None: unknown)."""
    came = _from_cache(remote, record)
    if came is not None:
        note(pushed="came from the cache")
        return came
    from pipeline.errors import RegistryError

    entry = cache_entry(image, tools)
    repair = entry.key in ctx.damaged_entries
    from pipeline.tasks.jobs import push_job

    try:
        # Compressing and hashing hold the GIL between pieces: a worker beside other jobs.
        digest = ctx.run_job(push_job, remote.registry, remote.repository,
                             output_path(ctx, image.name), ctx.manifest.insecure_hosts,
                             {"name": image.name, "key": entry.key, "material": entry.material,
                              "tags": [entry.tag], "repair": repair,
                              "record": {k: record.get(k) for k in RECORD_EXTRAS}})
    except RegistryError as err:
        raise RegistryError(f"{image.name} is built ({output_path(ctx, image.name)}) but its "
                            f"push to the remote cache {remote} failed: {err}; the next run "
                            "pushes it again (ROOTFS_REMOTE_CACHE_PUSH=0 builds without "
                            "pushing)", status=err.status) from err
    note(pushed=str(digest), **({"repaired": True} if repair else {}))
    return str(digest)


def _publish(ctx: RunContext, image: ImagePlan, tools: Mapping[str, str], ref: ImageRef,
             record: Mapping[str, Any], cached: str | None) -> None:
    """Publish the cache's artifact ``cached`` as is when there is one (the chunks the hit
    verified, mounted), else push the output from the file."""
    from pipeline.base.digest import parse_digest
    from pipeline.remote.artifact import copy_artifact, push_artifact

    remote = ctx.manifest.remote
    assert ref.tag is not None, "internal error: a publish reference without a tag"
    client = ctx.registries.client()
    if remote is not None and cached is not None:
        digest = copy_artifact(client, remote.registry, remote.repository,
                               parse_digest(cached), to_registry=ref.registry,
                               to_repository=ref.repository, tag=ref.tag)
    else:
        entry = cache_entry(image, tools)
        # Same registry: blobs the cache holds are mounted, not uploaded (HEAD first).
        mount = (remote.repository if remote is not None and remote.registry == ref.registry
                 else None)
        digest = push_artifact(client, ref.registry, ref.repository,
                               output_path(ctx, image.name), name=image.name,
                               key=entry.key, material=entry.material, tags=[ref.tag],
                               record={k: record.get(k) for k in RECORD_EXTRAS},
                               mount_from=mount, repair=entry.key in ctx.damaged_entries)
    note(published=f"{ref}@{digest}")


def share_step(ctx: RunContext, image: ImagePlan, tools: Mapping[str, str]) -> dict[str, Any]:
    """``mkfs_step``, then push and publish; doit keeps what was shared."""
    mkfs_step(ctx, image, tools)
    record = read_record(record_path_for(output_path(ctx, image.name)))
    if record is None or not isinstance(record.get("sha256"), str):
        raise AssertionError(f"internal error: {image.name}: no build record after the build")
    if isinstance(record.get("remote_cache"), dict):
        note(outcome="from remote cache")
    remote = ctx.manifest.remote
    cached = None
    if remote is not None:
        cached = _push(ctx, image, tools, remote, record) if remote.push else (
            _from_cache(remote, record))
    if image.spec.publish is not None:
        _publish(ctx, image, tools, image.spec.publish, record, cached)
    return {"shared": shared_plan(ctx, image, record["sha256"])}


def sharing_tasks(ctx: RunContext, plan: RunPlan, tools: Mapping[str, str],
                  tasks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The mkfs ``tasks``, each sharing its image when there is anything to share."""
    remote = ctx.manifest.remote
    by_name = {image.name: image for image in plan.images}
    for task in tasks:
        image = by_name.get(task.get("name") or "")
        if image is None or (remote is None and image.spec.publish is None):
            yield task
            continue
        task["actions"] = [action(share_step, ctx, image, tools, name=f"mkfs:{image.name}",
                                  images=[image.name])]
        task["uptodate"] = [*task["uptodate"], SharedUpToDate(ctx, image)]
        yield task
