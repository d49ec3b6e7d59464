"""Derived builds (``builder = "mkfs"``) through the real doit: a batch sharing a
Debian-like base builds the base's ext4 once (with four tasks in parallel), records
``derived_from``, a tag bump derives again from the cached base, and gc keeps exactly
what derived builds need."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.debian import debian_like
from tests.harness.doitrun import World, run_doit, top_layer, verify_outputs
from tests.harness.images import make_layer
from tests.harness.registry import Registry

# End to end with real tools: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow

NAMES = "abcd"


@pytest.fixture
def world(registry: Registry, repo: str, tmp_path: Path) -> World:
    base = make_layer(debian_like(files=1500, size=6 << 20, seed=3).base)
    world = World(registry, repo, tmp_path / "project", base, builder="mkfs")
    world.project.mkdir()
    for name in NAMES:
        world.tops[name] = top_layer(name)
        world.push(name, "v1", world.tops[name])
    world.write_manifest()
    return world


def records(project: Path) -> dict[str, dict]:
    return {n: json.loads((project / f"out/{n}.json").read_text()) for n in NAMES}


def bases_built(run) -> list[str]:  # type: ignore[no-untyped-def]
    return [e["key"] for e in run.events if e.get("event") == "ext4.base_built"]


def test_a_batch_builds_its_base_once_and_derives_every_image(world: World) -> None:
    cold = run_doit(world.project, "-n", "4").check()
    built = bases_built(cold)
    assert len(built) == 1, "four parallel mkfs tasks must build their shared base once"
    assert {r["derived_from"] for r in records(world.project).values()} == {built[0]}
    assert [e["outcome"] for e in cold.events if e.get("event") == "task.done"
            and e["task"].startswith("mkfs:")] == ["derived"] * len(NAMES)
    verify_outputs(world.project, NAMES)
    cache = world.project / ".cache"
    assert sorted(p.name for p in (cache / "base").iterdir()) == sorted(
        [built[0], f".lock-{built[0]}"])

    # A tag bump derives from the cached base: no new base, only its own mkfs.
    world.push("a", "v2", top_layer("a", "2"))
    world.write_manifest(a=world.ref("a", "v2"))
    bump = run_doit(world.project).check()
    assert bases_built(bump) == []
    assert records(world.project)["a"]["derived_from"] == built[0]
    assert [t for t in bump.ran if t.startswith("mkfs:")] == ["mkfs:a"]
    verify_outputs(world.project, NAMES)

    # gc keeps the base and the base chain's flat image, and nothing stale beside them.
    (cache / "base" / ("0" * 64)).mkdir()
    (cache / "base" / f".tmp-{'1' * 64}-1-ab").mkdir()
    flats = {p.name for p in (cache / "flat").iterdir()}
    # The base names its chain's flat image: gc --dry-run labels a base through it.
    marker = json.loads((cache / "base" / built[0] / "base.json").read_text())
    assert marker["chain"] in flats
    run_doit(world.project, "gc").check()
    assert sorted(p.name for p in (cache / "base").iterdir()) == [built[0]]
    kept = {p.name for p in (cache / "flat").iterdir()}
    assert len(kept) == len(NAMES) + 1 and kept < flats      # a:v1's flat image went
    again = run_doit(world.project).check()
    assert again.ran == []


def test_derive_false_builds_in_full_and_only_that_mkfs_reruns(world: World) -> None:
    run_doit(world.project).check()
    derived = records(world.project)["b"]
    world.write_manifest(extra={"b": "derive = false\n"})
    full = run_doit(world.project).check()
    assert full.ran == ["mkfs:b"]
    assert [e["outcome"] for e in full.events if e.get("task") == "mkfs:b"
            and e.get("event") == "task.done"] == ["built"]
    record = records(world.project)["b"]
    assert record["derived_from"] is None
    # Another way of building is other bytes (and another UUID, from the options).
    assert record["sha256"] != derived["sha256"]
    verify_outputs(world.project, NAMES)


def test_clean_removes_everything_the_tasks_made_bases_and_flat_trees_included(
        world: World) -> None:
    run_doit(world.project).check()
    cache = world.project / ".cache"
    assert list((cache / "base").iterdir()) and len(list((cache / "flat").iterdir())) == 5
    run_doit(world.project, "clean").check()
    assert [p.name for p in (cache / "base").iterdir() if not p.name.startswith(".lock-")] == []
    assert list((cache / "flat").iterdir()) == []  # the base chain's flat image too
    assert list((cache / "layers").iterdir()) == []
    assert list((world.project / "out").iterdir()) == []
    again = run_doit(world.project).check()
    assert len(bases_built(again)) == 1
    verify_outputs(world.project, NAMES)
