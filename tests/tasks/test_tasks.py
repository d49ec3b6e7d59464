"""Task generators: call them, assert on the task dicts (no doit run, no network)."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import structlog
from doit.exceptions import InvalidDodoFile, TaskError, TaskFailed, UnmetDependency
from doit.tools import config_changed

from pipeline.base.digest import digest_of
from pipeline.base.terminal import Terminal
from pipeline.errors import BadImage, LockError
from pipeline.ext4.native import WRITER_FORMAT_VERSION
from pipeline.flat.image import chain_key
from pipeline.oci import mediatypes as mt
from pipeline.oci.platform import Platform
from pipeline.oci.reference import parse_reference
from pipeline.project.buildrecord import BuildRecord, file_stamp, write_record
from pipeline.project.lockfile import LockEntry, update_lock
from pipeline.registry.resolve import BlobRef, LayerRef, ResolvedImage
from pipeline.tasks import build_tasks, doit_config, load_pipeline, make_context
from pipeline.tasks.fetch import blob_intact
from pipeline.tasks.gc import keep_for
from pipeline.tasks.mkfs import output_intact
from pipeline.tasks.reporter import PipelineReporter
from pipeline.tasks.resolve import check_frozen, lock_is_current, resolve_step, resolve_tasks
from pipeline.tasks.steps import run_step
from pipeline.tasks.toolcache import cached_tool_versions

REPO = Path(__file__).resolve().parents[2]

BASE = b"base layer"

MANIFEST = """\
[settings]
jobs = 3

[images.a]
ref = "registry.test:5000/a:1"

[images.b]
ref = "registry.test:5000/b:1"
size = "64MiB"

[images.c]
ref = "registry.test:5000/c:1"
platform = "linux/arm64"
"""


def layer(data: bytes) -> LayerRef:
    return LayerRef(digest_of(data), len(data), mt.OCI_LAYER_GZIP, digest_of(data + b"!"))


def resolved(ref_text: str, platform: str, *layers: bytes) -> ResolvedImage:
    ref = parse_reference(ref_text)
    return ResolvedImage(ref=ref, registry=ref.registry, repository=ref.repository,
                         platform=Platform(*platform.split("/")), index_digest=None,
                         manifest_digest=digest_of(ref_text.encode()),
                         config=BlobRef(digest_of(b"config" + ref_text.encode()), 10,
                                        mt.OCI_CONFIG),
                         layers=tuple(layer(data) for data in layers))


def lock(project: Path, **images: tuple[str, str, tuple[bytes, ...]]) -> None:
    entries = {name: LockEntry(ref, platform, resolved(ref, platform, *layers))
               for name, (ref, platform, layers) in images.items()}
    update_lock(project / "images.lock.json", lambda current: entries)


LOCKED = {
    "a": ("registry.test:5000/a:1", "linux/amd64", (BASE, b"top a")),
    "b": ("registry.test:5000/b:1", "linux/amd64", (BASE, b"top b")),
    "c": ("registry.test:5000/c:1", "linux/arm64", (BASE, b"top c")),
}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "images.toml").write_text(MANIFEST)
    lock(tmp_path, **LOCKED)
    return tmp_path


def context(project: Path, text: str | None = None, **kw: Any):  # type: ignore[no-untyped-def]
    if text is not None:
        (project / "images.toml").write_text(text)
    return make_context(project / "images.toml", environ={}, terminal=Terminal(io.StringIO()),
                        **kw)


def tasks_by_name(dicts: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found = {}
    for d in dicts:
        name = d.get("basename", "")
        found[f"{name}:{d['name']}" if d["name"] is not None else f"{name}"] = d
    return found


def config_of(task: dict[str, Any]) -> Any:
    changed = [u for u in task["uptodate"] if isinstance(u, config_changed)]
    assert len(changed) == 1, f"{task['name']}: exactly one config_changed"
    return changed[0].config


def test_build_tasks_share_the_base_layer(project: Path) -> None:
    tasks = tasks_by_name(build_tasks(context(project)))
    base, tops = layer(BASE).digest, {n: layer(f"top {n}".encode()).digest for n in "abc"}
    assert sorted(tasks) == sorted(
        ["fetch-blob", "unpack", "flatten", "mkfs"]
        + [f"fetch-blob:{d}" for d in (base, *tops.values())]
        + [f"unpack:{d}" for d in (base, *tops.values())]
        + [f"flatten:{n}" for n in "abc"] + [f"mkfs:{n}" for n in "abc"])
    assert tasks[f"unpack:{base}"]["task_dep"] == [f"fetch-blob:{base}"]
    assert tasks["flatten:b"]["task_dep"] == [f"unpack:{base}", f"unpack:{tops['b']}"]
    assert tasks["mkfs:b"]["task_dep"] == ["flatten:b"]
    assert tasks["mkfs:b"]["targets"] == [str(project / "out/b.ext4"),
                                          str(project / "out/b.json")]
    assert tasks[f"fetch-blob:{base}"]["meta"] == {"images": ["a", "b", "c"]}
    assert tasks[f"fetch-blob:{base}"]["doc"] == "fetch layer blob (10 B) used by a, b, c"


def test_every_task_has_a_doc_one_config_changed_and_no_output_capture(project: Path) -> None:
    for name, task in tasks_by_name(build_tasks(context(project))).items():
        assert task["doc"], name
        if task["name"] is None:
            continue  # group task
        config_of(task)
        assert task["io"] == {"capture": False}, name
        assert "file_dep" not in task, f"{name}: no content-addressed file is ever md5-hashed"


def test_keys_are_the_content(project: Path) -> None:
    tasks = tasks_by_name(build_tasks(context(project)))
    base = layer(BASE)
    assert config_of(tasks[f"fetch-blob:{base.digest}"]) == {"digest": str(base.digest),
                                                              "size": base.size}
    assert config_of(tasks[f"unpack:{base.digest}"])["diff_id"] == str(base.diff_id)
    chain = [str(base.digest), str(layer(b"top a").digest)]
    # The native builder (the default) reads no staging tree.
    assert config_of(tasks["flatten:a"]) == {"chain": chain, "staging": False}
    mkfs = config_of(tasks["mkfs:a"])
    assert mkfs["chain"] == chain_key(chain)
    assert mkfs["options"]["size"] == "auto" and mkfs["options"]["builder"] == "native"
    # No e2fsprogs tool makes a native image: its writer's format keys it, not their versions.
    assert "tools" not in mkfs
    assert mkfs["native_writer_format"] == WRITER_FORMAT_VERSION
    assert (mkfs["name"], mkfs["ref"]) == ("a", "registry.test:5000/a:1")


def test_mkfs_builder_keys_on_the_e2fsprogs_versions(project: Path) -> None:
    ctx = context(project, MANIFEST.replace("jobs = 3", 'jobs = 3\nbuilder = "mkfs"'))
    tasks = tasks_by_name(build_tasks(ctx))
    assert config_of(tasks["flatten:a"])["staging"] is True
    mkfs = config_of(tasks["mkfs:a"])
    assert mkfs["options"]["builder"] == "mkfs" and "native_writer_format" not in mkfs
    # The tools an mkfs build runs, and only those (resize2fs and tune2fs went with
    # derived builds).
    assert set(mkfs["tools"]) == {"mkfs.ext4", "debugfs", "e2fsck"}


@pytest.mark.parametrize("builder", ["native", "mkfs"])
def test_an_old_derive_key_changes_no_task(project: Path, builder: str) -> None:
    settings = MANIFEST.replace("jobs = 3", f'jobs = 3\nbuilder = "{builder}"')
    without = {n: config_of(t) for n, t in tasks_by_name(build_tasks(
        context(project, settings))).items() if t["name"] is not None}
    for value in ("true", "false"):
        text = settings.replace('size = "64MiB"', f'size = "64MiB"\nderive = {value}')
        with_key = {n: config_of(t) for n, t in tasks_by_name(build_tasks(
            context(project, text))).items() if t["name"] is not None}
        assert with_key == without, value


def test_changing_one_size_changes_only_that_mkfs_config(project: Path) -> None:
    before = {n: config_of(t) for n, t in tasks_by_name(build_tasks(context(project))).items()
              if t["name"] is not None}
    after_ctx = context(project, MANIFEST.replace('size = "64MiB"', 'size = "128MiB"'))
    after = {n: config_of(t) for n, t in tasks_by_name(build_tasks(after_ctx)).items()
             if t["name"] is not None}
    assert sorted(n for n in before if before[n] != after[n]) == ["mkfs:b"]


def test_an_image_with_a_stale_lock_entry_gets_no_build_tasks(project: Path) -> None:
    ctx = context(project, MANIFEST.replace("/a:1", "/a:2"))
    names = tasks_by_name(build_tasks(ctx))
    assert "mkfs:a" not in names and "flatten:a" not in names
    assert f"fetch-blob:{layer(b'top a').digest}" not in names
    assert {"mkfs:b", "mkfs:c"} <= set(names)


def test_resolve_tasks_are_up_to_date_from_the_lock_alone(project: Path) -> None:
    ctx = context(project, MANIFEST.replace("/a:1", "/a:2"))
    tasks = tasks_by_name(resolve_tasks(ctx))
    assert sorted(tasks) == ["", ":a", ":b", ":c"]
    results = {}
    for name in "abc":
        (check, args, kwargs), = tasks[f":{name}"]["uptodate"]
        assert check is lock_is_current
        results[name] = check(*args, **kwargs)
        assert tasks[f":{name}"]["doc"].startswith("resolve registry.test:5000/")
    assert results == {"a": False, "b": True, "c": True}


@pytest.mark.parametrize("change, expect", [
    pytest.param(lambda m: m, None, id="current"),
    pytest.param(lambda m: m.replace("/b:1", "/b:2"),
                 "image 'b' is stale: locked 'registry.test:5000/b:1' for linux/amd64, the "
                 "manifest says 'registry.test:5000/b:2' for linux/amd64", id="changed-ref"),
    pytest.param(lambda m: m.replace('platform = "linux/arm64"', 'platform = "linux/arm/v7"'),
                 "image 'c' is stale: locked 'registry.test:5000/c:1' for linux/arm64, the "
                 "manifest says 'registry.test:5000/c:1' for linux/arm/v7", id="changed-platform"),
    pytest.param(lambda m: m + '[images.d]\nref = "registry.test:5000/d:1"\n',
                 "image 'd' has no entry", id="new-image"),
])
def test_frozen_mode_refuses_a_stale_lock(project: Path, change, expect) -> None:  # type: ignore[no-untyped-def]
    ctx = context(project, change(MANIFEST), frozen=True)
    if expect is None:
        check_frozen(ctx)
        return
    with pytest.raises(LockError) as exc:
        check_frozen(ctx)
    assert str(exc.value) == (f"{ctx.lock_path}: frozen mode: {expect}; run `doit` without "
                              "frozen mode and commit the lock")


def test_frozen_mode_without_a_lock(tmp_path: Path) -> None:
    ctx = context(tmp_path, MANIFEST, frozen=True)
    with pytest.raises(LockError, match="frozen mode: the lock file is missing"):
        check_frozen(ctx)
    with pytest.raises(LockError, match="frozen mode: image 'a' would need resolving"):
        resolve_step(ctx, ctx.manifest.images[0])


def test_blob_intact_trusts_an_unchanged_stamp_only(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"0123456789")
    values = {"stamp": list(file_stamp(blob) or ())}
    assert blob_intact(None, values, blob, 10)
    assert not blob_intact(None, {}, blob, 10)  # never verified (doit db lost)
    assert not blob_intact(None, values, blob, 11)
    blob.write_bytes(b"0123456780")  # same size, rewritten: the mtime moves
    os.utime(blob, ns=(0, values["stamp"][1] + 1))
    assert not blob_intact(None, values, blob, 10)
    blob.unlink()
    assert not blob_intact(None, values, blob, 10)


def test_output_intact_needs_the_record_key_and_the_same_file(tmp_path: Path) -> None:
    output, record = tmp_path / "a.ext4", tmp_path / "a.json"
    output.write_bytes(b"ext4")
    write_record(record, BuildRecord(
        name="a", ref="a:1", resolved={}, chain="c", options={}, size=4, sha256="00",
        uuid="u", tool_versions={}, build_key="KEY", ext4_key="E", ext4_stamp=file_stamp(output),
        built_at="now"))
    assert output_intact(output, record, "KEY")
    # A record from before derived builds were removed has derived_from: it still describes.
    old = json.loads(record.read_text())
    assert "derived_from" not in old
    record.write_text(json.dumps({**old, "derived_from": "b" * 64}))
    assert output_intact(output, record, "KEY")
    assert not output_intact(output, record, "OTHER")
    output.write_bytes(b"ext4 changed")
    assert not output_intact(output, record, "KEY")
    output.unlink()
    assert not output_intact(output, record, "KEY")


def test_run_step_turns_pipeline_errors_into_one_failed_line(project: Path) -> None:
    ctx = context(project)

    def broken(_ctx: Any, what: str) -> None:
        raise BadImage(f"{what}: the manifest has 2 layers but the config lists 1 diff_ids")

    failed = run_step(broken, ctx, "img", name="mkfs:a", images=["a"])
    assert isinstance(failed, TaskFailed)
    assert failed.message == "img: the manifest has 2 layers but the config lists 1 diff_ids"

    def bug(_ctx: Any) -> None:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        run_step(bug, ctx, name="mkfs:a", images=["a"])

    def disk_full(_ctx: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/cache/layers/x/files/000001")

    failed = run_step(disk_full, ctx, name="unpack:x", images=["a"])
    assert isinstance(failed, TaskFailed)
    assert failed.message == ("No space left on device (/cache/layers/x/files/000001); "
                              "fix that and run doit again")

    def missing(_ctx: Any) -> None:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/x")

    with pytest.raises(FileNotFoundError):  # not environmental: a bug keeps its traceback
        run_step(missing, ctx, name="mkfs:a", images=["a"])
    assert run_step(lambda _ctx: {"stamp": [1, 2]}, ctx, name="x", images=[]) == {"stamp": [1, 2]}


class FakeTask:
    def __init__(self, name: str, images: list[str], actions: bool = True) -> None:
        self.name, self.meta = name, {"images": images}
        self.actions = ["a"] if actions else []


def test_reporter_one_line_per_failure_and_a_summary() -> None:
    out = io.StringIO()
    reporter = PipelineReporter(out, {})
    ok, bad, blocked, group = (FakeTask("mkfs:a", ["a"]), FakeTask("fetch-blob:x", ["b", "c"]),
                               FakeTask("mkfs:b", ["b"]), FakeTask("mkfs", [], actions=False))
    reporter.execute_task(ok)
    reporter.add_success(ok)
    reporter.skip_uptodate(FakeTask("unpack:y", ["a"]))
    reporter.add_failure(bad, TaskFailed("GET http://r/v2/b/blobs/x: 404 Not Found"))
    reporter.add_failure(blocked, UnmetDependency("fetch-blob:x"))
    reporter.add_failure(group, UnmetDependency("mkfs:b"))
    reporter.complete_run()
    assert out.getvalue() == (
        "FAILED fetch-blob:x (b, c): GET http://r/v2/b/blobs/x: 404 Not Found\n"
        "tasks: 1 ran, 1 up to date, 1 failed, 1 not run because a dependency failed\n")


def test_reporter_failed_line_escapes_what_a_registry_said() -> None:
    out = io.StringIO()
    reporter = PipelineReporter(out, {})
    reporter.add_failure(FakeTask("resolve:a", ["a"]), TaskFailed(
        "GET http://r/v2/a/manifests/1: 400 \x1b[2J\x07\nFAILED mkfs:b (b): forged"))
    assert out.getvalue() == ("FAILED resolve:a (a): GET http://r/v2/a/manifests/1: 400"
                              " \\x1b[2J\\x07\\nFAILED mkfs:b (b): forged\n")


def test_reporter_keeps_the_traceback_of_a_bug() -> None:
    out = io.StringIO()
    reporter = PipelineReporter(out, {})
    try:
        raise KeyError("oops")
    except KeyError as err:
        reporter.add_failure(FakeTask("mkfs:a", ["a"]), TaskError("PythonAction Error", err))
    assert out.getvalue().startswith("ERROR mkfs:a (a): PythonAction Error\nTraceback")
    assert "KeyError: 'oops'" in out.getvalue()


def test_gc_keeps_what_the_lock_of_manifest_images_references(project: Path) -> None:
    ctx = context(project, MANIFEST.replace("[images.c]", "[images.gone]"))
    keep = keep_for(ctx)
    top_c = layer(b"top c").digest
    assert layer(BASE).digest in keep.layers and top_c not in keep.layers
    assert top_c not in keep.blobs
    assert digest_of(b"configregistry.test:5000/a:1") in keep.blobs
    assert keep.chains == {chain_key([str(layer(BASE).digest), str(layer(f"top {n}".encode())
                                                                   .digest)]) for n in "ab"}


def test_doit_config(project: Path) -> None:
    ctx = context(project)
    config = doit_config(ctx)
    assert config["default_tasks"] == ["prune", "resolve", "mkfs"]
    assert (config["par_type"], config["num_process"], config["backend"]) == ("thread", 3,
                                                                              "sqlite3")
    assert config["dep_file"] == str(project / ".cache" / "doit.db")
    assert issubclass(config["reporter"], PipelineReporter) and config["reporter"].ctx is ctx


def test_load_pipeline_turns_a_bad_manifest_into_one_doit_error(tmp_path: Path) -> None:
    structlog_config = structlog.get_config()
    (tmp_path / "images.toml").write_text('[images.a]\nref = "alpine"\nsise = "1G"\n')
    with pytest.raises(InvalidDodoFile) as exc:
        load_pipeline(tmp_path / "images.toml")
    assert str(exc.value) == (f"{tmp_path}/images.toml:3: image 'a': unknown key 'sise' (did "
                              "you mean 'size'?); allowed: builder, config_path, features, "
                              "headroom, inode_size, "
                              "journal, label, platform, publish, ref, reserved_percent, size")
    structlog.configure(**structlog_config)


# What a run that builds nothing loads: no network client, no builder ---------------------

# Modules only a step that fetches, resolves, unpacks, flattens or builds needs.
HEAVY_MODULES = ("httpx", "httpcore", "pipeline.registry.client", "pipeline.registry.auth",
                 "pipeline.registry.resolve", "pipeline.registry.retry", "pipeline.ext4.build",
                 "pipeline.ext4.tools", "pipeline.ext4.debugfs", "pipeline.layers.unpack",
                 "pipeline.layers.compression", "pipeline.flat.staging", "pipeline.flat.flatten",
                 "pipeline.layers.overlap", "pipeline.tasks.workers", "zstandard", "isal")


def heavy_loaded(modules: Iterable[str]) -> list[str]:
    """Which of ``modules`` (names from ``sys.modules``) are or lie under HEAVY_MODULES."""
    return sorted(m for m in modules if m.split(".")[0] in HEAVY_MODULES or m in HEAVY_MODULES)

LOAD_DODO = """
import json, runpy, sys
namespace = runpy.run_path(sys.argv[1])
for creator in ("task_resolve", "task_mkfs"):
    list(namespace[creator]())
namespace["task_update"](), namespace["task_gc"]()
print(json.dumps(sorted(sys.modules)))
"""


def loaded_modules(code: str, *args: str, cwd: Path) -> set[str]:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "ROOTFS_LOG": "json"},
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.splitlines()[-1]))


def test_importing_the_tasks_loads_no_network_client_and_no_builder(tmp_path: Path) -> None:
    found = loaded_modules("import json, sys, pipeline.tasks\n"
                           "print(json.dumps(sorted(sys.modules)))", cwd=tmp_path)
    assert "pipeline.tasks" in found
    assert heavy_loaded(found) == []


def test_loading_dodo_and_creating_every_task_loads_no_network_client_and_no_builder(
        project: Path) -> None:
    # Tool versions are asked once per toolchain (the builder loads then), as the first run did.
    (project / ".cache").mkdir()
    cached_tool_versions(project / ".cache")
    found = loaded_modules(LOAD_DODO, str(REPO / "dodo.py"), cwd=project)
    assert "pipeline.tasks.mkfs" in found and "doit" in found
    assert heavy_loaded(found) == []


def test_a_job_runs_here_alone_and_in_a_worker_beside_another(project: Path) -> None:
    ctx = context(project)  # jobs = 3 on this machine's cores
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: every job runs here")
    first_started, release = threading.Event(), threading.Event()

    def first() -> int:
        first_started.set()
        release.wait(60)
        return os.getpid()

    try:
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(ctx.run_job, first)
            assert first_started.wait(60)
            beside = ctx.run_job(os.getpid)
            release.set()
            assert running.result() == os.getpid()
        assert beside != os.getpid()
        assert ctx.run_job(os.getpid) == os.getpid()  # alone again
    finally:
        release.set()
        ctx.close()
