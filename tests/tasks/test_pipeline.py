"""End to end: the real doit, the real registry, real e2fsprogs; count what actually ran.

Every test builds its own project directory from images pushed to the
session's registry and runs ``doit -f <repo>/dodo.py -d <project>`` as a
subprocess. What ran is read from the reporter's JSON ``task.done`` lines;
what was opened or connected, from an audit hook inside the doit process.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from pipeline.layers.store import MARKER_NAME
from pipeline.tasks.interpreter import SWITCH_INTERVAL_S, YOUNG_OBJECTS
from tests.harness.doitrun import (
    ThrottleProxy,
    World,
    kill_group,
    make_world,
    run_doit,
    sha256_file,
    start_doit,
    top_layer,
    verify_outputs,
    wait_for,
)
from tests.harness.images import Layer
from tests.harness.registry import Registry

# End to end with real tools: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow


@pytest.fixture(params=["native", "mkfs"])
def world(registry: Registry, repo: str, tmp_path: Path, request: pytest.FixtureRequest) -> World:
    """Three images sharing a base, built by each ext4 builder in turn."""
    return make_world(registry, repo, tmp_path, builder=request.param)


def d(layer: Layer) -> str:
    return layer.digest


def cold_tasks(world: World) -> list[str]:
    layers = [world.base, *world.tops.values()]
    return sorted([f"resolve:{n}" for n in world.tops] + [f"flatten:{n}" for n in world.tops]
                  + [f"mkfs:{n}" for n in world.tops] + [f"fetch-blob:{d(x)}" for x in layers]
                  + [f"unpack:{d(x)}" for x in layers])


def overlaps(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What each fetch's overlapped unpack did, by digest."""
    return {e["digest"]: e["overlap"] for e in run.events
            if e.get("event") == "task.done" and "overlap" in e}


def stamps(project: Path, names) -> dict[str, tuple[int, int]]:  # type: ignore[no-untyped-def]
    return {n: (os.stat(project / f"out/{n}.ext4").st_mtime_ns,
                os.stat(project / f"out/{n}.ext4").st_ino) for n in names}


def fetched(run) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(e["digest"] for e in run.events
                  if e.get("event") == "task.done" and e.get("outcome") == "fetched")


def test_cold_build_fetches_the_shared_base_once_and_a_second_run_does_nothing(
        world: World) -> None:
    cold = run_doit(world.project).check()
    assert sorted(cold.ran) == cold_tasks(world)
    layer_fetches = [x for x in fetched(cold) if x in {d(world.base), *map(d, world.tops.values())}]
    assert layer_fetches == sorted([d(world.base), *map(d, world.tops.values())])
    verify_outputs(world.project, "abc")
    lock = json.loads((world.project / "images.lock.json").read_text())
    assert sorted(lock["images"]) == ["a", "b", "c"]

    dep_file = (world.project / ".cache/doit.db").read_bytes()
    # The run after a build skips the graph (tasks/noop.py); without the stamp, the whole
    # graph finds every task up to date; both must open, connect and import nothing.
    for skipped in (True, False):
        if not skipped:
            (world.project / ".cache/noop.json").unlink()
        noop = run_doit(world.project, audit=True).check()
        assert bool([e for e in noop.events if e.get("event") == "run.unchanged"]) is skipped
        check_noop(world, noop, dep_file)


def check_noop(world: World, noop, dep_file: bytes) -> None:  # type: ignore[no-untyped-def]
    assert noop.ran == []
    assert noop.interpreter[:2] == (YOUNG_OBJECTS, SWITCH_INTERVAL_S)   # tasks.interpreter
    assert noop.interpreter[2] > 10_000
    assert [e for e in noop.events if e.get("event") == "run.finished"][0]["up_to_date"] == 17
    cache = world.project / ".cache"
    assert noop.opened(cache / "blobs") == []
    assert noop.opened(cache / "layers") == []
    assert noop.opened(cache / "flat") == []
    assert [p for p in noop.opened(world.project / "out") if p.endswith(".ext4")] == []
    assert noop.connects == []
    assert noop.opened(world.project)  # the audit trail does record opens (the lock file)
    # Not even doit's dep file is written (SQLite bumps a change counter in the file
    # on every write transaction): no journal, no fsync on a run that did nothing.
    assert (world.project / ".cache/doit.db").read_bytes() == dep_file
    # Nothing that only a working step needs was even imported (start-up time).
    assert "pipeline.tasks.mkfs" in noop.modules
    heavy = ("pipeline.registry.client", "pipeline.ext4.build", "pipeline.ext4.tools",
             "pipeline.layers.unpack",
             "pipeline.flat.staging", "pipeline.registry.resolve", "pipeline.layers.overlap",
             "pipeline.tasks.workers")
    assert [m for m in noop.modules
            if m.split(".")[0] in ("httpx", "httpcore", "zstandard", "isal") or m in heavy] == []


def test_native_images_need_no_e2fsprogs(registry: Registry, repo: str,
                                         tmp_path: Path) -> None:
    """A manifest of native images runs no e2fsprogs tool, not even to ask its version:
    with none on PATH the cold build and the no-op run after it succeed."""
    world = make_world(registry, repo, tmp_path, names="a", builder="native")
    no_tools = {"PATH": "/usr/bin:/bin"}
    assert shutil.which("mkfs.ext4", path=no_tools["PATH"]) is None
    cold = run_doit(world.project, env=no_tools).check()
    assert "mkfs:a" in cold.ran
    assert not (world.project / ".cache/tools.json").exists()
    verify_outputs(world.project, "a")
    noop = run_doit(world.project, env=no_tools).check()
    assert noop.ran == [] and [e for e in noop.events if e.get("event") == "run.unchanged"]


def test_tag_bump_fetches_only_new_blobs_and_rebuilds_only_that_image(world: World) -> None:
    run_doit(world.project).check()
    before = stamps(world.project, "bc")
    new_top = top_layer("a", "2")
    world.push("a", "v2", new_top)
    world.write_manifest(a=world.ref("a", "v2"))
    bump = run_doit(world.project).check()
    assert sorted(bump.ran) == sorted(["resolve:a", f"fetch-blob:{d(new_top)}",
                                       f"unpack:{d(new_top)}", "flatten:a", "mkfs:a"])
    # Only the new top layer is downloaded by a fetch task (the new config
    # blob comes with resolve:a); the shared base is not fetched again.
    assert fetched(bump) == [d(new_top)]
    assert stamps(world.project, "bc") == before
    record = json.loads((world.project / "out/a.json").read_text())
    assert record["ref"] == world.ref("a", "v2")
    assert [x["digest"] for x in record["layers"]] == [d(world.base), d(new_top)]
    verify_outputs(world.project, "abc")


def test_size_option_change_runs_only_its_mkfs(world: World) -> None:
    run_doit(world.project).check()
    world.write_manifest(extra={"b": 'size = "96MiB"\n'})
    changed = run_doit(world.project).check()
    assert changed.ran == ["mkfs:b"]
    assert (world.project / "out/b.ext4").stat().st_size == 96 << 20
    verify_outputs(world.project, "abc")
    # `derive` (derived builds, removed) is ignored with one warning: nothing reruns.
    world.write_manifest(extra={"b": 'size = "96MiB"\n', "c": "derive = false\n"})
    ignored = run_doit(world.project).check()
    assert ignored.ran == []
    assert [(e["file"], e["image"]) for e in ignored.events
            if e.get("event") == "config.ignored_key"] == [
        (f"{world.project / 'images.toml'}:11", "c")]       # a: 3 lines, b: 4, c's 4th


@pytest.mark.parametrize("removed", ["c.ext4", "c.json"])
def test_deleted_output_runs_only_its_mkfs(world: World, removed: str) -> None:
    run_doit(world.project).check()
    (world.project / "out" / removed).unlink()
    assert run_doit(world.project).check().ran == ["mkfs:c"]
    verify_outputs(world.project, "abc")


def test_corrupt_cached_blob_is_detected_and_fetched_again(world: World) -> None:
    run_doit(world.project).check()
    blob = world.blob(world.base)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))  # same size, other bytes
    again = run_doit(world.project).check()
    assert again.ran == [f"fetch-blob:{d(world.base)}"]
    assert fetched(again) == [d(world.base)]
    assert any(e["event"] == "blobcache.corrupt_refetch" for e in again.events)
    assert "sha256:" + sha256_file(blob) == d(world.base)
    # The layer store never saw the bad bytes; with it gone, the good bytes fetched again
    # are unpacked as they arrive, and the unpack task (its config unchanged) has nothing to do.
    shutil.rmtree(world.project / ".cache/layers" / d(world.base).split(":")[1])
    blob.write_bytes(bytes(data))
    third = run_doit(world.project).check()
    assert third.ran == [f"fetch-blob:{d(world.base)}"]
    assert overlaps(third) == {d(world.base): "unpacked"}
    store = json.loads((world.project / ".cache/layers" / d(world.base).split(":")[1]
                        / MARKER_NAME).read_text())
    assert store["diff_id"] == world.base.diff_id


def test_sigkill_mid_fetch_then_a_good_run(registry: Registry, repo: str,
                                           tmp_path: Path) -> None:
    proxy = ThrottleProxy(registry.host)
    try:
        world = make_world(registry, repo, tmp_path, names="ab", big=3 << 20, host=proxy.host)
        big = world.tops["a"]
        partials = world.project / ".cache/blobs/sha256"
        proxy.rate = 256 << 10  # the 3 MiB layer takes about 12 s
        proc = start_doit(world.project, log=tmp_path / "killed.log")
        wait_for(lambda: any(p.stat().st_size > 0 for p in partials.glob(".*.partial"))
                 if partials.exists() else False, what="a partial download")
        kill_group(proc)
        assert not world.blob(big).exists()
        proxy.rate = None
        run_doit(world.project).check()
        assert "sha256:" + sha256_file(world.blob(big)) == d(big)
        assert not list(partials.glob(".*.partial"))
        verify_outputs(world.project, "ab")
        assert run_doit(world.project).check().ran == []
    finally:
        proxy.close()


SLOW_MKFS = """#!/bin/sh
for arg in "$@"; do
    if [ "$arg" = "-d" ]; then touch "$SLOW_MKFS_MARKER"; sleep 60; fi
done
exec {real} "$@"
"""


def test_sigkill_mid_mkfs_then_a_good_run_and_a_second_run_is_refused(
        world: World, tmp_path: Path) -> None:
    if world.builder == "native":
        pytest.skip("the shim slows mkfs.ext4, which the native builder never runs")
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "mkfs.ext4").write_text(SLOW_MKFS.format(real=shutil.which("mkfs.ext4")))
    (shim / "mkfs.ext4").chmod(0o755)
    marker = tmp_path / "mkfs-started"
    env = {"PATH": f"{shim}:{os.environ['PATH']}", "SLOW_MKFS_MARKER": str(marker)}
    proc = start_doit(world.project, env=env, log=tmp_path / "killed.log")
    wait_for(marker.exists, what="mkfs.ext4 to start")

    busy = run_doit(world.project)
    assert busy.returncode == 3
    cache = world.project / ".cache"
    assert busy.stderr == (f"ERROR: {cache} is in use by another pipeline run (pid {proc.pid});"
                           " wait for it to finish, or give this run its own cache_dir\n")
    kill_group(proc)
    assert not list((world.project / "out").glob("*.ext4"))

    good = run_doit(world.project).check()
    assert {"mkfs:a", "mkfs:b", "mkfs:c"} <= set(good.ran)
    verify_outputs(world.project, "abc")


def bad_manifest_cases() -> list:  # type: ignore[type-arg]
    good = '[images.a]\nref = "127.0.0.1:5000/x/a:1"\n'
    return [
        pytest.param(good + 'size = "1GiB\n', ":3: invalid TOML: Illegal character '\\n'",
                     id="syntax-error"),
        pytest.param(good + 'szie = "1GiB"\n', ":3: image 'a': unknown key 'szie' (did you "
                     "mean 'size'?); allowed: builder, config_path, features, headroom, "
                     "inode_size, journal, "
                     "label, platform, publish, ref, reserved_percent, size", id="unknown-key"),
        pytest.param(good + 'size = "lots"\n', ":3: image 'a': bad `size`: invalid size "
                     "'lots': expected a number with an optional unit B, K, KiB, kB, M, MiB, "
                     "MB, G, GiB, GB, T, TiB or TB (e.g. 2GiB, 512MiB, 1G or a number of bytes)",
                     id="bad-size"),
        pytest.param(good + good, ":3: image 'a' is declared twice; image names must be "
                     "unique", id="duplicate-name"),
        pytest.param('[images.a]\nref = "alpine@sha256:1234"\n', ":2: image 'a': bad `ref`: "
                     "invalid image reference 'alpine@sha256:1234': bad digest after '@': "
                     "expected 64 lowercase hex characters after 'sha256:'", id="bad-reference"),
        pytest.param(good + 'platform = "linux/amd46"\n', ":3: image 'a': bad `platform` "
                     "'linux/amd46': unknown platform: architecture 'amd46' is not one of 386, "
                     "amd64, arm, arm64, loong64, mips, mips64, mips64le, mipsle, ppc64, "
                     "ppc64le, riscv64, s390x", id="unknown-platform"),
    ]


@pytest.mark.parametrize("text, message", bad_manifest_cases())
def test_bad_manifest_is_one_error_line_and_exit_3(tmp_path: Path, text: str,
                                                   message: str) -> None:
    (tmp_path / "images.toml").write_text(text)
    run = run_doit(tmp_path, audit=True)
    assert (run.returncode, run.stdout) == (3, "")
    assert run.stderr == f"ERROR: {tmp_path}/images.toml{message}\n"
    assert run.connects == []
    assert not (tmp_path / ".cache").exists()


def test_a_failing_image_gives_one_line_and_the_others_build_with_continue(
        world: World) -> None:
    text = (world.project / "images.toml").read_text()
    (world.project / "images.toml").write_text(
        text + f'[images.nope]\nref = "{world.ref("nope")}"\n')
    run = run_doit(world.project, "--continue")
    assert run.returncode != 0
    lines = run.stdout.splitlines()
    assert lines[0] == (f"FAILED resolve:nope (nope): GET http://{world.registry.host}/v2/"
                        f"{world.namespace}/nope/manifests/v1: 404 Not Found (MANIFEST_UNKNOWN: "
                        "manifest unknown): not found; check the repository name and the tag or "
                        "digest")
    assert [line for line in lines if line.startswith(("FAILED", "ERROR"))] == [lines[0]]
    assert run.failed == ["resolve:nope"]
    verify_outputs(world.project, "abc")


def test_frozen_mode_refuses_a_missing_or_stale_lock(world: World) -> None:
    missing = run_doit(world.project, "frozen=1")
    lock = world.project / "images.lock.json"
    assert (missing.returncode, missing.stderr) == (
        3, f"ERROR: {lock}: frozen mode: the lock file is missing; run `doit` without frozen "
           "mode and commit it\n")
    run_doit(world.project).check()
    assert run_doit(world.project, env={"ROOTFS_FROZEN": "1"}).check().ran == []
    world.write_manifest(b=world.ref("b", "v2"))
    stale = run_doit(world.project, "frozen=1")
    assert (stale.returncode, stale.stderr) == (
        3, f"ERROR: {lock}: frozen mode: image 'b' is stale: locked '{world.ref('b')}' for "
           f"linux/amd64, the manifest says '{world.ref('b', 'v2')}' for linux/amd64; run `doit` "
           "without frozen mode and commit the lock\n")


def manifest_requests(world: World, since: int) -> list[str]:
    """``METHOD name`` of each manifest request the registry logged for the world's images."""
    log = world.registry.log_path.read_bytes()[since:].decode(errors="replace")
    prefix = f"/v2/{world.namespace}/"
    return sorted(f"{m.group(1)} {m.group(2)}" for m in re.finditer(
        rf'"(GET|HEAD) {re.escape(prefix)}([^/ ]+)/manifests/[^ ]+ HTTP', log))


def test_update_re_resolves_a_moved_tag(world: World) -> None:
    run_doit(world.project).check()
    lock = (world.project / "images.lock.json").read_bytes()
    since = world.registry.log_path.stat().st_size
    unmoved = run_doit(world.project, "update").check()
    assert unmoved.ran == ["update"]
    # Tags that did not move cost one HEAD each (free on Docker Hub), no pull.
    assert manifest_requests(world, since) == ["HEAD a", "HEAD b", "HEAD c"]
    assert (world.project / "images.lock.json").read_bytes() == lock

    moved = top_layer("b", "moved")
    world.push("b", "v1", moved)  # the same tag now names another image
    assert run_doit(world.project).check().ran == []  # the lock pins what v1 was
    since = world.registry.log_path.stat().st_size
    update = run_doit(world.project, "update").check()
    assert update.ran == ["update"]
    assert manifest_requests(world, since) == ["GET b", "HEAD a", "HEAD b", "HEAD c"]
    rebuild = run_doit(world.project).check()
    assert sorted(rebuild.ran) == sorted([f"fetch-blob:{d(moved)}", f"unpack:{d(moved)}",
                                          "flatten:b", "mkfs:b"])
    verify_outputs(world.project, "abc")


def test_list_info_clean_forget_need_no_network(world: World) -> None:
    run_doit(world.project).check()
    listed = run_doit(world.project, "list", "--all", audit=True).check()
    assert listed.connects == []
    names = {line.split()[0] for line in listed.stdout.splitlines()}
    assert set(cold_tasks(world)) <= names and {"update", "gc"} <= names
    info = run_doit(world.project, "info", "mkfs:a", audit=True).check()
    assert "status     : up-to-date" in info.stdout and info.connects == []
    clean = run_doit(world.project, "clean", "mkfs:b", audit=True).check()
    assert clean.connects == [] and not (world.project / "out/b.ext4").exists()
    run_doit(world.project, "forget", "mkfs:c").check()
    again = run_doit(world.project, audit=True).check()
    assert sorted(again.ran) == ["mkfs:b", "mkfs:c"] and again.connects == []
    forgotten = [e for e in again.events if e.get("task") == "mkfs:c"]
    assert any(e["event"] == "task.done" and e.get("outcome") == "already built"
               for e in forgotten)  # no rebuild needed
    verify_outputs(world.project, "abc")


def test_gc_removes_what_no_image_references(world: World) -> None:
    run_doit(world.project).check()
    new_top = top_layer("a", "2")
    world.push("a", "v2", new_top)
    world.write_manifest(a=world.ref("a", "v2"))
    run_doit(world.project).check()
    old = world.tops["a"]
    cache = world.project / ".cache"
    old_hex = d(old).split(":")[1]
    assert world.blob(old).exists() and (cache / "layers" / old_hex).exists()
    # What an earlier version's derived builds left: a base image and its lock.
    (cache / "base" / ("b" * 64)).mkdir(parents=True)
    (cache / "base" / ("b" * 64) / "base.ext4").write_bytes(b"\0" * 4096)
    (cache / "base" / f".lock-{'b' * 64}").touch()
    dry = run_doit(world.project, "gc", "--dry-run").check()
    assert dry.ran == ["gc"] and world.blob(old).exists() and (cache / "base").exists()
    assert {e["entry"] for e in dry.events if e.get("event") == "gc.would_remove"} >= {
        f"base/{'b' * 64}", f"base/.lock-{'b' * 64}"}
    run_doit(world.project, "gc").check()
    assert not world.blob(old).exists() and not (cache / "layers" / old_hex).exists()
    assert not (cache / "base").exists()
    assert len(list((cache / "flat").iterdir())) == 3
    assert world.blob(new_top).exists() and world.blob(world.base).exists()
    assert run_doit(world.project).check().ran == []


def test_another_manifest_and_another_projects_dodo(world: World) -> None:
    (world.project / "images.toml").rename(world.project / "other.toml")
    run = run_doit(world.project, "manifest=other.toml").check()
    assert sorted(run.ran) == cold_tasks(world)
    assert (world.project / "other.lock.json").exists()
    assert run_doit(world.project, env={"ROOTFS_MANIFEST": "other.toml"}).check().ran == []
    # Another project's dodo.py: the two documented lines, run with plain `doit`.
    (world.project / "dodo.py").write_text(textwrap.dedent("""\
        from pipeline.tasks import load_pipeline
        globals().update(load_pipeline("other.toml"))
        """))
    from tests.harness.doitrun import LAUNCHER, doit_env
    proc = subprocess.run([os.sys.executable, "-c", LAUNCHER], cwd=world.project,
                          capture_output=True, text=True, env=doit_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert '"ran": 0' in proc.stderr


def test_an_output_grows_with_resize2fs_and_keeps_its_tree(world: World, tmp_path: Path) -> None:
    """What users do before booting a VM: grow the image offline by 1 GiB."""
    from tests.ext4.test_build import actual_nodes

    run_doit(world.project).check()
    grown = tmp_path / "grown.ext4"
    shutil.copyfile(world.project / "out/a.ext4", grown)
    before = actual_nodes(grown)
    with open(grown, "r+b") as f:
        f.truncate(os.path.getsize(grown) + (1 << 30))
    env = {**os.environ, "LC_ALL": "C"}
    proc = subprocess.run(["resize2fs", str(grown)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fsck = subprocess.run(["e2fsck", "-fn", str(grown)], capture_output=True, text=True,
                          env=env)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert actual_nodes(grown) == before
