"""Task family ``remote:<image>``: the remote cache, looked up before any layer is fetched.

With ``[cache] remote`` (or ``ROOTFS_REMOTE_CACHE``) set, every image has a
cache key: the sha256 of its key material, which is the mkfs task's own
``ext4_config`` (layer chain, ext4 options, builder and tool versions, UUID
seed scheme) plus the platform and the artifact format. The same dict
decides the local build, so the remote key and the local up-to-date check
cannot drift; it comes from the lock file alone, nothing is downloaded.

``remote:<image>`` runs before the image's layer tasks: unless the image's
output is already built for that config (then it makes no request), one
``HEAD`` of the tag ``rk-<key>`` in the repository; on a hit the artifact is
fetched and verified (``remote.fetch``: config key and material against the
local ones, every chunk, the whole image) into ``out/<name>.ext4`` with a
build record saying where it came from. A damaged artifact is a miss with
one warning line, and the image is built locally; so is every image when
the cache cannot be reached (``remote.unavailable``): the cache only speeds
builds up, it never stops one.

What keeps a hit lazy: every ``fetch-blob``, ``unpack`` and ``flatten``
task of a run with a remote cache waits for the lookups of its images and
counts as up to date when all of those images are built (``UnlessBuilt``),
so a hit fetches no layer, unpacks nothing and flattens nothing, and a
second run does not fetch layers for an image it got from the cache.
``mkfs:<image>`` then finds its output built and only shares it
(``tasks.share``: push to the cache, publish).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from pipeline import __version__
from pipeline.base.escape import escape_text
from pipeline.base.files import file_stamp
from pipeline.project.buildrecord import (
    BuildRecord,
    build_key,
    describes,
    now_utc,
    read_record,
    record_path_for,
    write_record,
)
from pipeline.project.config.remote import RemoteCache
from pipeline.remote.artifact import ARTIFACT_TYPE
from pipeline.tasks.context import RunContext
from pipeline.tasks.mkfs import builder_fields, ext4_config, mkfs_config, output_path
from pipeline.tasks.plan import ImagePlan, RunPlan
from pipeline.tasks.steps import IO, action, group, note

__all__ = ["KEY_VERSION", "TAG_PREFIX", "key_material", "cache_key", "cache_tag",
           "CacheEntry", "cache_entry",
           "remote_tasks", "remote_step", "image_built", "UnlessBuilt", "lazy_layer_tasks",
           "write_fetched"]

log = structlog.get_logger(__name__)

# Bumped when what the key covers changes meaning: every old entry becomes a miss.
KEY_VERSION = 1
# ``rk-`` + 64 hex digits: 67 characters of the 128 a tag may have, never the
# ``sha256-<hex>`` shape the referrers fallback scheme reserves.
TAG_PREFIX = "rk-"
# Build record fields a cache entry carries for the reader's out/<name>.json.
# An entry pushed before derived builds were removed also has ``derived_from``: ignored.
RECORD_EXTRAS = ("uuid", "runtime", "clamped_times")


def key_material(image: ImagePlan, tools: Mapping[str, str]) -> dict[str, Any]:
    """Everything that decides the image's bytes, as JSON values (what the config holds)."""
    material = {"artifact": ARTIFACT_TYPE, "key_version": KEY_VERSION,
                "platform": str(image.spec.platform), "ext4": ext4_config(image, tools)}
    # Tuples become lists: the material read back from a registry must compare equal.
    loaded: dict[str, Any] = json.loads(json.dumps(material, sort_keys=True))
    return loaded


def cache_tag(key: str) -> str:
    return TAG_PREFIX + key


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """Where an image's output lives in the remote cache, and what its config must hold."""

    material: dict[str, Any]
    key: str
    tag: str


def cache_entry(image: ImagePlan, tools: Mapping[str, str]) -> CacheEntry:
    material = key_material(image, tools)
    key = build_key(material)
    return CacheEntry(material, key, cache_tag(key))


def cache_key(image: ImagePlan, tools: Mapping[str, str]) -> str:
    return cache_entry(image, tools).key


def image_built(ctx: RunContext, image: ImagePlan, config: Mapping[str, Any]) -> bool:
    """The image's output and record are the build ``config`` (mkfs_config) describes."""
    output = output_path(ctx, image.name)
    return describes(read_record(record_path_for(output)), output, build_key(config))


def _lookup(ctx: RunContext, remote: RemoteCache, tag: str) -> bool:
    """One HEAD of the tag: True when the repository has it."""
    from pipeline.oci.mediatypes import OCI_MANIFEST

    client = ctx.registries.client()
    url = client.url(remote.registry, remote.repository, "manifests", tag)

    def once() -> bool:
        with client.send("HEAD", url, {"Accept": OCI_MANIFEST}, ok=(200, 404)) as response:
            return response.status_code == 200

    return client.retry.run(once)


def remote_step(ctx: RunContext, image: ImagePlan, tools: Mapping[str, str]) -> None:
    remote = ctx.manifest.remote
    if remote is None:
        raise AssertionError("internal error: a remote task without a remote cache")
    if image_built(ctx, image, mkfs_config(image, tools)):
        note(outcome="already built")
        return
    entry = cache_entry(image, tools)
    material, key, tag = entry.material, entry.key, entry.tag
    from pipeline.errors import DigestMismatch, RegistryError, RemoteArtifactError

    try:
        found = _lookup(ctx, remote, tag)
    except RegistryError as err:
        # The cache is an accelerator: unreachable or refusing, the image is built here.
        log.warning("remote.unavailable", image=image.name, repository=str(remote),
                    error=escape_text(str(err), 400), next="built locally")
        note(outcome="cache unavailable, built locally", key=key[:12])
        return
    if not found:
        note(outcome="miss", key=key[:12])
        return
    try:
        digest = write_fetched(ctx, image, tools, remote, tag, key, material)
    except (RemoteArtifactError, RegistryError, DigestMismatch) as err:
        log.warning("remote.bad_entry", image=image.name, tag=tag[:15],
                    error=escape_text(str(err), 400), next="built locally")
        ctx.damaged_entries.add(key)
        note(outcome="bad entry, built locally", key=key[:12])
        return
    note(outcome="hit", key=key[:12], artifact=digest)


def _extras(record: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The pusher's record extras, checked for shape (they land in out/<name>.json)."""
    from pipeline.errors import RemoteArtifactError

    uuid, runtime = record.get("uuid"), record.get("runtime")
    clamped = record.get("clamped_times", [])
    if (not isinstance(uuid, str) or len(uuid) > 64
            or not (runtime is None or isinstance(runtime, dict))
            or not isinstance(clamped, list) or not all(isinstance(p, str) for p in clamped)):
        raise RemoteArtifactError(f"{where}: the config's record is malformed; it is treated "
                                  "as a cache miss (push it again from a good build)")
    return {"uuid": uuid, "runtime": runtime, "clamped_times": tuple(clamped)}


def write_fetched(ctx: RunContext, image: ImagePlan, tools: Mapping[str, str],
                  remote: RemoteCache, tag: str, key: str,
                  material: Mapping[str, Any]) -> str:
    """Fetch the entry ``tag`` into out/<name>.ext4 and write its record; the artifact digest."""
    from pipeline.tasks.jobs import fetch_job

    output = output_path(ctx, image.name)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    # Hashing and decompressing hold the GIL between pieces: beside another fetch or
    # build, a worker process runs it.
    fetched = ctx.run_job(fetch_job, remote.registry, remote.repository, tag, output, key,
                          dict(material), ctx.manifest.insecure_hosts)
    from pipeline.errors import RemoteArtifactError

    try:
        extras = _extras(fetched.record, f"{remote}:{tag}")
    except RemoteArtifactError:
        output.unlink(missing_ok=True)
        raise
    stamp = file_stamp(output)
    if stamp is None:
        raise AssertionError(f"internal error: {output} vanished right after its fetch")
    write_record(record_path_for(output), BuildRecord(
        name=image.name, ref=image.spec.ref_text, resolved=image.resolved.to_json(),
        chain=image.chain_key, options=image.spec.ext4.to_dict(), size=fetched.size,
        sha256=fetched.sha256, uuid=extras["uuid"], **builder_fields(image, tools),
        build_key=build_key(mkfs_config(image, tools)),
        ext4_key=build_key(ext4_config(image, tools)), ext4_stamp=stamp, built_at=now_utc(),
        runtime=extras["runtime"],
        clamped_times=extras["clamped_times"], pipeline_version=__version__,
        remote_cache={"repository": str(remote), "tag": tag, "digest": str(fetched.digest)}))
    return str(fetched.digest)


class UnlessBuilt:
    """doit uptodate: True when every image in ``images`` is built (``image_built``), else
    the task's own checks (``conditions``, doit uptodate items), as doit would run them."""

    def __init__(self, built: Callable[[], bool], conditions: list[Any]) -> None:
        self.built, self.conditions = built, conditions

    def configure_task(self, task: Any) -> None:
        for condition in self.conditions:
            if hasattr(condition, "configure_task"):
                condition.configure_task(task)

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        if self.built():
            return True
        for condition in self.conditions:
            if condition is None or isinstance(condition, bool):
                if condition is False:
                    return False
                continue
            call, args, kwargs = (condition if isinstance(condition, tuple)
                                  else (condition, [], {}))
            # doit's convention: a first parameter named task, a second named values.
            names = list(inspect.signature(call).parameters)
            magic = ([task] if names[:1] == ["task"] else []) + (
                [values] if names[1:2] == ["values"] else [])
            if not call(*magic, *args, **kwargs):
                return False
        return True


def remote_tasks(ctx: RunContext, plan: RunPlan,
                 tools: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    remote = ctx.manifest.remote
    if remote is None:
        return
    yield group(f"look every image up in the remote cache {remote} (before any layer)",
                basename="remote")
    for image in plan.images:
        config = mkfs_config(image, tools)
        yield {
            "name": image.name,
            "basename": "remote",
            "doc": f"fetch {image.name}.ext4 from the remote cache {remote} if it is there",
            "actions": [action(remote_step, ctx, image, tools, name=f"remote:{image.name}",
                               images=[image.name])],
            # Built already: no request at all.
            "uptodate": [(image_built, [ctx, image, config], {})],
            "io": IO,
            "meta": {"images": [image.name]},
        }


def lazy_layer_tasks(ctx: RunContext, plan: RunPlan, tools: Mapping[str, str],
                     tasks: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """``tasks`` (fetch-blob, unpack, flatten) after the lookups of their images, and up to
    date when those images are built: a cache hit needs none of them."""
    if ctx.manifest.remote is None:
        yield from tasks
        return
    by_name = {image.name: image for image in plan.images}
    configs = {image.name: mkfs_config(image, tools) for image in plan.images}
    for task in tasks:
        images = [by_name[n] for n in task.get("meta", {}).get("images", ()) if n in by_name]
        if task.get("name") is None or not images:
            yield task
            continue
        if task["basename"] == "fetch-blob":
            task["task_dep"] = [*task.get("task_dep", ()), *(f"remote:{i.name}" for i in images)]

        def built(images: list[ImagePlan] = images) -> bool:
            return all(image_built(ctx, i, configs[i.name]) for i in images)

        task["uptodate"] = [UnlessBuilt(built, list(task.get("uptodate", ())))]
        yield task

