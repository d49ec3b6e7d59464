"""End to end, day-to-day use (issue 15): a restored CI cache, the entry point,
another project's dodo.py, a shared cache, what a run reports."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

import pipeline
from pipeline.cli import HINT
from pipeline.tasks.why import short_digest
from tests.harness.doitrun import (
    World,
    make_world,
    run_doit,
    run_plain_doit,
    run_rootfs,
    top_layer,
)
from tests.harness.registry import Registry

# End to end through the real doit and registry: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow


@pytest.fixture
def world(registry: Registry, repo: str, tmp_path: Path) -> World:
    return make_world(registry, repo, tmp_path, names="ab")


def test_a_cache_restored_with_whole_second_mtimes_is_a_no_op(world: World,
                                                              tmp_path: Path) -> None:
    run_doit(world.project).check()
    records = {p.name: p.read_bytes() for p in (world.project / "out").glob("*.json")}
    # What a CI cache action does: tar czf (whole-second mtimes, new inodes), then
    # extract into a fresh checkout.
    archive = tmp_path / "cache.tgz"
    subprocess.run(["tar", "--format=gnu", "-czf", str(archive), "-C", str(world.project),
                    ".cache", "out", "images.toml", "images.lock.json"], check=True)
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(restored)], check=True)
    assert all(p.stat().st_mtime_ns % 1_000_000_000 == 0
               for p in (restored / ".cache/blobs/sha256").iterdir())
    noop = run_doit(restored, audit=True).check()
    assert noop.ran == []
    assert noop.opened(restored / ".cache/blobs") == []  # no blob re-hashed
    assert [p for p in noop.opened(restored / "out") if p.endswith(".ext4")] == []
    assert {p.name: p.read_bytes() for p in (restored / "out").glob("*.json")} == records


def another_project(world: World, body: str) -> Path:
    """A dodo.py of another project: the two documented lines, then its own tasks."""
    (world.project / "dodo.py").write_text(textwrap.dedent("""\
        from pipeline.tasks import load_pipeline
        globals().update(load_pipeline())
        """) + textwrap.dedent(body))
    return world.project / "dodo.py"


def test_another_projects_task_can_depend_on_one_image(world: World) -> None:
    dodo = another_project(world, """\
        def task_boot_a():
            return {"actions": ["cp out/a.ext4 boot-a.ext4"], "task_dep": ["mkfs:a"],
                    "targets": ["boot-a.ext4"]}
        """)
    run = run_doit(world.project, "boot_a", dodo=dodo).check()
    assert sorted(t for t in run.ran if t.startswith(("mkfs:", "flatten:"))) == [
        "flatten:a", "mkfs:a"]  # only the image asked for, not b
    assert (world.project / "boot-a.ext4").read_bytes() == (
        world.project / "out/a.ext4").read_bytes()
    assert not (world.project / "out/b.ext4").exists()
    # list and info still see the real tasks made from the lock.
    listed = run_doit(world.project, "list", "--all", dodo=dodo).check()
    assert "flatten:a" in listed.stdout and "mkfs:b" in listed.stdout
    assert run_doit(world.project, "boot_a", dodo=dodo).check().ran == []


def test_rootfs_runs_without_a_dodo_file_and_says_its_version(world: World) -> None:
    run = run_rootfs(world.project, "mkfs:b").check()
    assert "mkfs:b" in run.ran and "mkfs:a" not in run.ran
    record = json.loads((world.project / "out/b.json").read_text())
    assert record["pipeline_version"] == pipeline.__version__
    version = run_rootfs(world.project, "--version").check()
    assert version.stdout.startswith(f"rootfs-pipeline {pipeline.__version__} (doit 0.3")
    # Plain doit where only images.toml is: doit's own error, now saying what to run.
    plain = run_plain_doit(world.project)
    assert plain.returncode == 3 and plain.stderr == f"ERROR: {HINT}\n"


def test_info_says_in_words_why_an_image_would_rebuild(world: World) -> None:
    run_doit(world.project).check()
    new_top = top_layer("b", "2")
    world.push("b", "v2", new_top)
    world.write_manifest({"a": 'size = "256MiB"\n'}, b=world.ref("b", "v2"))
    run_doit(world.project, "resolve").check()  # info reads the lock; resolving is a run's job
    info_a = run_doit(world.project, "info", "mkfs:a")
    assert info_a.returncode == 1
    assert " - would rebuild: size: auto -> 256 MiB (args=" in info_a.stdout
    info_b = run_doit(world.project, "info", "mkfs:b")
    assert (f" - would rebuild: ref: '{world.ref('b')}' -> '{world.ref('b', 'v2')}'; layer"
            f" {short_digest(new_top.digest)} is new; layer"
            f" {short_digest(world.tops['b'].digest)} is gone (args=") in info_b.stdout
    assert "config_changed(" not in info_a.stdout + info_b.stdout  # no dict dump


def summary(run) -> dict[str, tuple[str, bool, bool]]:  # type: ignore[no-untyped-def]
    """image -> (outcome, has a size in bytes, has a time), from the one run.summary event."""
    [event] = [e for e in run.events if e.get("event") == "run.summary"]
    return {row["image"]: (row["outcome"], isinstance(row["size"], int),
                           row["seconds"] > 0) for row in event["images"]}


def test_the_summary_counts_every_image_and_what_happened_to_it(world: World) -> None:
    text = (world.project / "images.toml").read_text()
    (world.project / "images.toml").write_text(
        text + f'[images.nope]\nref = "{world.ref("nope")}"\n')
    # Without --continue doit stops at the failure: the images it never reached count too.
    stopped = run_doit(world.project)
    assert stopped.returncode != 0
    # a and b were resolved (some time) before the run stopped.
    assert summary(stopped) == {"a": ("not built", False, True),
                                "b": ("not built", False, True),
                                "nope": ("failed", False, True)}
    assert stopped.stdout.splitlines()[-1].endswith(", 1 failed, 2 images not built")
    first = run_doit(world.project, "--continue")
    assert summary(first) == {"a": ("built", True, True), "b": ("built", True, True),
                              "nope": ("failed", False, True)}
    done = [e for e in first.events if e.get("event") == "task.done" and e["task"] == "mkfs:a"]
    assert isinstance(done[0]["size"], int) and isinstance(done[0]["free"], int)
    world.write_manifest({"b": 'label = "new"\n'})  # nope is gone from the manifest
    run_doit(world.project, "forget", "mkfs:a").check()  # doit's state lost, outputs kept
    again = run_doit(world.project).check()
    assert summary(again) == {"a": ("from cache", True, True), "b": ("built", True, True)}
    noop = run_doit(world.project).check()
    assert summary(noop) == {"a": ("up to date", True, False), "b": ("up to date", True, False)}
    # A run that builds nothing lists no images.
    gc = run_doit(world.project, "gc").check()
    assert [e for e in gc.events if e.get("event") == "run.summary"] == []


def gc_events(run, event: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [e for e in run.events if e.get("event") == event]


def test_gc_in_a_shared_cache_keeps_what_any_registered_manifest_uses(world: World) -> None:
    shared = world.project.parent / "shared-cache"
    other = world.project.parent / "other"
    other.mkdir()
    settings = f'[settings]\ncache_dir = "{shared}"\n'
    text = (world.project / "images.toml").read_text()
    (world.project / "images.toml").write_text(settings + text)
    # The other project builds only b, from the same cache.
    (other / "images.toml").write_text(settings + f'[images.b]\nref = "{world.ref("b")}"\n')
    run_doit(world.project).check()
    run_doit(other).check()
    assert len(list((shared / "manifests").iterdir())) == 2
    # This project drops b: only the other project still uses b's top layer.
    (world.project / "images.toml").write_text(settings + f'[images.a]\nref = "{world.ref("a")}"\n')
    b_top = shared / "blobs/sha256" / world.tops["b"].digest.split(":")[1]
    dry = run_doit(world.project, "gc", "--dry-run").check()
    assert gc_events(dry, "gc.would_remove") == []  # everything is used by someone
    real = run_doit(world.project, "gc").check()
    assert gc_events(real, "gc.removed") == [] and b_top.exists()
    # Without the other manifest, its registration goes and so does what only it used.
    (other / "images.toml").unlink()
    dry = run_doit(world.project, "gc", "--dry-run").check()
    listed = {(e["kind"], e["entry"]) for e in gc_events(dry, "gc.would_remove")}
    b_hex = world.tops["b"].digest.split(":")[1]
    assert {("blob", f"blobs/sha256/{b_hex}"), ("layer", f"layers/{b_hex}")} <= listed
    assert {kind for kind, _ in listed} == {"blob", "layer", "flat"}
    [would] = gc_events(dry, "gc.collected")
    assert b_top.exists() and would["freed_bytes"] == sum(would["bytes_by_kind"].values()) > 0
    real = run_doit(world.project, "gc").check()
    [freed] = gc_events(real, "gc.collected")
    assert not b_top.exists() and len(list((shared / "manifests").iterdir())) == 1
    # Exactly the bytes the dry run announced, entry by entry.
    assert freed["freed_bytes"] == would["freed_bytes"]
    assert {(e["kind"], e["entry"]) for e in gc_events(real, "gc.removed")} == listed
    # b's lock entry and outputs go with the next build (gc leaves the lock alone).
    assert run_doit(world.project).check().ran == ["prune:b"]


def test_gc_dry_run_lists_each_entry_under_the_image_that_last_used_it(
        registry: Registry, repo: str, tmp_path: Path) -> None:
    world = make_world(registry, repo, tmp_path, names="abc")
    shared = tmp_path / "shared-cache"
    other, third = tmp_path / "other", tmp_path / "third"
    settings = f'[settings]\ncache_dir = "{shared}"\n'
    c_top = world.tops.pop("c")
    world.write_manifest()
    (world.project / "images.toml").write_text(settings + (world.project / "images.toml")
                                               .read_text())
    for project, name in ((other, "c"), (third, "b")):
        project.mkdir()
        (project / "images.toml").write_text(settings + f'[images.{name}]\nref = '
                                             f'"{world.ref(name)}"\n')
    for project in (world.project, other, third):
        run_doit(project).check()
    old_a = world.tops["a"]
    world.tops["a"] = top_layer("a", "2")
    world.push("a", "v2", world.tops["a"])
    text = (world.project / "images.toml").read_text()
    (world.project / "images.toml").write_text(text.replace(world.ref("a"), world.ref("a", "v2")))
    run_doit(world.project).check()  # a's former top goes out of every lock
    (other / "images.toml").unlink()  # c's manifest is gone, its lock is still there
    stray = shared / "layers" / ("e" * 64)
    (stray / "files").mkdir(parents=True)
    (stray / "files" / "000001").write_bytes(b"x" * 10_000)  # nobody ever said whose

    dry = run_doit(world.project, "gc", "--dry-run").check()
    listed = {e["entry"]: e["images"] for e in gc_events(dry, "gc.would_remove")}
    hexes = {name: layer.digest.split(":")[1] for name, layer in
             (("a", old_a), ("c", c_top))}
    c_label = f"c ({other / 'images.toml'})"
    assert listed[f"blobs/sha256/{hexes['a']}"] == ["a"] == listed[f"layers/{hexes['a']}"]
    assert listed[f"blobs/sha256/{hexes['c']}"] == [c_label] == listed[f"layers/{hexes['c']}"]
    assert listed[f"layers/{'e' * 64}"] == []
    groups = {(e["images"], e["kind"]): e for e in gc_events(dry, "gc.by_image")}
    assert {"a", c_label, "no image"} == {images for images, _ in groups}
    assert groups[("a", "flat")]["entries"] == 1 and groups[("no image", "layer")]["bytes"] > 0
    [would] = gc_events(dry, "gc.collected")
    assert sum(g["bytes"] for g in groups.values()) == would["freed_bytes"] > 0
    assert all(path.startswith(("blobs/", "layers/", "flat/", "base/")) for path in listed)

    real = run_doit(world.project, "gc").check()
    [freed] = gc_events(real, "gc.collected")
    # The bytes the dry run announced are the bytes the real run freed, entry by entry.
    assert freed["freed_bytes"] == would["freed_bytes"]
    assert {e["entry"]: e["bytes"] for e in gc_events(real, "gc.removed")} == {
        e["entry"]: e["bytes"] for e in gc_events(dry, "gc.would_remove")}
    assert not stray.exists() and (shared / "blobs/sha256" / hexes["c"]).exists() is False
    # b, used by this project and the third, stays; the owners log forgets what went.
    assert (shared / "layers" / world.tops["b"].digest.split(":")[1]).is_dir()
    assert hexes["a"] not in (shared / "owners.jsonl").read_text()


def test_an_image_removed_from_the_manifest_loses_its_lock_entry_and_outputs(
        world: World) -> None:
    run_doit(world.project).check()
    (world.project / "out/keep-me.ext4").write_bytes(b"not ours")
    world.tops.pop("b")
    world.write_manifest()
    run = run_doit(world.project).check()
    assert run.ran == ["prune:b"]
    [line] = [e for e in run.events if e.get("task") == "prune:b"]
    assert line["outcome"] == "removed from the manifest: lock entry and outputs removed"
    assert line["removed"] == ["b.ext4", "b.json"]
    lock = json.loads((world.project / "images.lock.json").read_text())
    assert sorted(lock["images"]) == ["a"]
    assert sorted(p.name for p in (world.project / "out").iterdir()) == [
        "a.ext4", "a.json", "keep-me.ext4"]
    assert run_doit(world.project).check().ran == []
