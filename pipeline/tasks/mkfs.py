"""Task family ``mkfs:<image>``: out/<name>.ext4 and its build record out/<name>.json.

Everything that decides the outputs is collected in one dict,
``mkfs_config``: it feeds doit's ``config_changed`` and, hashed, becomes the
record's ``build_key``. Up to date means: that config is unchanged and the
record beside the image says it was built for this key from this very file
(``buildrecord.describes``). So a changed size option reruns exactly this
task, and a deleted output too.

The build is ``ext4.builder.build_image``, always in full. With ``builder =
"native"`` (the default) the native writer makes the image from the flat
entries and the layer stores; its format version keys the task and the
e2fsprogs versions do not (no tool of theirs runs). With ``builder = "mkfs"``,
``mkfs.ext4 -d`` and the debugfs fixup make it from the staging tree, and the
versions of the e2fsprogs tools that run key the task (``toolcache``).
``ext4.builder.bytes_decided_by`` says which.

The step avoids work it can prove unnecessary: when doit's database was
lost (SIGKILL, a fresh cache) but the record still describes the file, or
when only the reference text changed and the ext4 bytes would be the same
(``ext4_key``, checked against the file's sha256), it rewrites only the
record. The build itself runs beside other such jobs in a worker process
(``RunContext.run_job``): its Python half would hold the GIL.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from pipeline import __version__
from pipeline.base.escape import escape_text
from pipeline.base.files import TEMP_PREFIX, remove_path
from pipeline.base.units import format_size
from pipeline.errors import Ext4Error
from pipeline.ext4.builder import NATIVE_WRITER_FORMAT, bytes_decided_by
from pipeline.flat.image import HEADER_NAME, ROOTFS_NAME, chain_key
from pipeline.project.buildrecord import (
    BuildRecord,
    build_key,
    describes,
    file_stamp,
    now_utc,
    read_record,
    record_path_for,
    write_record,
)
from pipeline.tasks.context import RunContext
from pipeline.tasks.plan import ImagePlan, RunPlan
from pipeline.tasks.steps import IO, action, group, note
from pipeline.tasks.why import ImageUpToDate

__all__ = ["mkfs_tasks", "mkfs_step", "mkfs_config", "ext4_config", "output_intact",
           "output_built_for",
           "output_path"]

log = structlog.get_logger(__name__)

_HASH_CHUNK = 1 << 20
# A log line names this many clamped paths; the build record lists them all.
_CLAMPED_SHOWN = 5
# How the filesystem UUID is seeded: from the diff_id chain, so one image stored
# compressed (a registry) or not (a docker-archive) gives the same bytes. Part of
# the ext4 key: images built under the older chain-of-blobs seed are rebuilt once.
SEED_SCHEME = "diff_ids"
# What a record holds beyond the build: a record written without these is stale.
RECORD_FIELDS = ("runtime",)


def output_path(ctx: RunContext, name: str) -> Path:
    return ctx.output_dir / f"{name}.ext4"


def ext4_config(image: ImagePlan, tools: Mapping[str, str]) -> dict[str, Any]:
    """What decides the ext4 bytes: the layer chain, the options (the builder among them),
    the seed scheme, and the builder's own inputs: the native writer's format version,
    or the e2fsprogs versions for mkfs."""
    options = image.spec.ext4
    return {"chain": image.chain_key, "options": options.to_dict(),
            **bytes_decided_by(options.builder, tools), "seed": SEED_SCHEME}


def mkfs_config(image: ImagePlan, tools: Mapping[str, str]) -> dict[str, Any]:
    """What decides both outputs: the ext4 config plus what the record says about the image."""
    return {**ext4_config(image, tools), "name": image.name, "ref": image.spec.ref_text,
            "resolved": image.resolved.to_json(), "record": RECORD_FIELDS}


def output_intact(output: Path, record: Path, key: str) -> bool:
    """doit uptodate: the record was written for ``key`` and ``output`` is that file."""
    return describes(read_record(record), output, key)


def output_built_for(output: Path, record: Path, config: Mapping[str, Any]) -> bool:
    """doit uptodate: ``output_intact`` for the key of ``config``, hashed only when checked
    (``doit list`` of a thousand images need not encode a thousand configs)."""
    return output_intact(output, record, build_key(config))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _remove_stale_temporaries(output: Path) -> None:
    """A killed build leaves ``.tmp-<name>.ext4-*`` beside the output; we hold the run lock."""
    for name in (output.name, record_path_for(output).name):
        for stale in output.parent.glob(f"{TEMP_PREFIX}{name}-*"):
            stale.unlink(missing_ok=True)
            log.info("mkfs.removed_leftover", path=str(stale))


def mkfs_step(ctx: RunContext, image: ImagePlan, tools: Mapping[str, str]) -> None:
    config = mkfs_config(image, tools)
    key, ext4_key = build_key(config), build_key(ext4_config(image, tools))
    output = output_path(ctx, image.name)
    record_path = record_path_for(output)
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    old = read_record(record_path)
    if describes(old, output, key):
        note(outcome="already built", output=str(output))
        return
    flat = ctx.cache.flat_root / image.chain_key
    if not (flat / HEADER_NAME).is_file() or (image.spec.ext4.builder == "mkfs"
                                             and not (flat / ROOTFS_NAME).is_dir()):
        raise Ext4Error(f"image {image.name!r}: the flat image {str(flat)!r} is missing; run "
                        f"`doit flatten:{image.name}` first (or plain `doit`)")
    from pipeline.tasks.runtime import runtime_config

    # The image's own layers' flat image (without the config_path file) holds its passwd.
    layers_flat = ctx.cache.flat_root / chain_key(image.layer_chain)
    if not (layers_flat / HEADER_NAME).is_file():
        raise Ext4Error(f"image {image.name!r}: the flat image {str(layers_flat)!r} of its "
                        f"layers is missing; run `doit flatten:{image.name}` first")
    runtime = runtime_config(ctx, image, layers_flat)
    if (old is not None and old.get("ext4_key") == ext4_key and file_stamp(output) is not None
            and _sha256(output) == old.get("sha256")):
        _write(record_path, image, old["size"], old["sha256"], old["uuid"], tools, key, ext4_key,
               output, runtime, tuple(str(p) for p in old.get("clamped_times") or ()))
        note(outcome="unchanged, record rewritten", output=str(output))
        return
    _remove_stale_temporaries(output)
    # The seed is the content and options only: the same inputs give the same UUID, and
    # the same layers stored otherwise (a docker-archive keeps them uncompressed, a
    # registry gzipped) give the same bytes. Content is the chain of diff_ids.
    content = chain_key([str(layer.diff_id) for layer in image.resolved.layers])
    seed = build_key({"chain": content, "options": image.spec.ext4.to_dict()})
    from pipeline.tasks.jobs import image_job  # the builder loads only when an image is built

    # Its Python half holds the GIL: beside another job, a worker process runs it.
    result = ctx.run_job(image_job, ctx.cache, flat, output, image.spec.ext4, seed)
    _write(record_path, image, result.size, result.sha256, result.uuid, tools, key, ext4_key,
           output, runtime, result.clamped_times)
    if result.clamped_times:
        log.warning("mkfs.times_clamped", count=len(result.clamped_times),
                    paths=[escape_text(p) for p in result.clamped_times[:_CLAMPED_SHOWN]],
                    reason="outside the years ext4 inodes hold; out/<name>.json lists them")
    # Sizes as numbers (bytes): JSON readers compute with them; the terminal formats them.
    note(outcome="built", output=str(output), size=result.size, sha256=result.sha256,
         free=result.free_bytes)


def builder_fields(image: ImagePlan, tools: Mapping[str, str]) -> dict[str, Any]:
    """The record's ``tool_versions`` and ``native_writer_format``: what beyond the tree
    decided the bytes, the same whether the image was built here or fetched from the
    remote cache."""
    native = image.spec.ext4.builder == "native"
    return {"tool_versions": {} if native else dict(tools),
            "native_writer_format": NATIVE_WRITER_FORMAT if native else None}


def _write(record_path: Path, image: ImagePlan, size: int, sha256: str, uuid: str,
           tools: Mapping[str, str], key: str, ext4_key: str, output: Path,
           runtime: Mapping[str, Any], clamped: tuple[str, ...]) -> None:
    stamp = file_stamp(output)
    if stamp is None:
        raise AssertionError(f"internal error: {output} vanished right after its build")
    write_record(record_path, BuildRecord(
        name=image.name, ref=image.spec.ref_text, resolved=image.resolved.to_json(),
        chain=image.chain_key, options=image.spec.ext4.to_dict(), size=size, sha256=sha256,
        uuid=uuid, **builder_fields(image, tools), build_key=key, ext4_key=ext4_key,
        ext4_stamp=stamp, built_at=now_utc(), runtime=runtime,
        clamped_times=clamped, pipeline_version=__version__))


def mkfs_tasks(ctx: RunContext, plan: RunPlan,
               tools: Mapping[str, str]) -> Iterator[dict[str, Any]]:
    yield group("build out/<image>.ext4 and out/<image>.json for every image",
                basename="mkfs")
    for image in plan.images:
        config = mkfs_config(image, tools)
        output = output_path(ctx, image.name)
        record = record_path_for(output)
        name = f"mkfs:{image.name}"
        size = image.spec.ext4.size
        yield {
            "name": image.name,
            "basename": "mkfs",
            "doc": f"build {output.name} ({'auto size' if size is None else format_size(size)}) "
                   f"from {image.spec.ref_text}",
            "actions": [action(mkfs_step, ctx, image, tools, name=name, images=[image.name])],
            "task_dep": [f"flatten:{image.name}"],
            "targets": [str(output), str(record)],
            # One check that also says, in `doit info`, why it would rebuild (tasks.why).
            "uptodate": [ImageUpToDate(config, output, record, build_key(config))],
            "clean": [(remove_path, [output]), (remove_path, [record])],
            "io": IO,
            "meta": {"images": [image.name]},
        }
