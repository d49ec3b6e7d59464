"""The instant no-op (tasks/noop.py): which runs may skip the graph, and that a thousand
images skipped still notice a deleted output, a changed option and a changed reference."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.project.buildrecord import build_key
from pipeline.project.config import load_manifest
from pipeline.project.lockfile import read_lock
from pipeline.tasks.mkfs import mkfs_config
from pipeline.tasks.noop import STAMP_NAME, plain_run
from pipeline.tasks.plan import ImagePlan
from pipeline.tasks.toolcache import cached_tool_versions
from tests.harness.doitrun import World, make_world, run_doit, top_layer, verify_outputs
from tests.harness.registry import Registry

# doit's command line (without the program): True when it runs the default tasks and
# nothing changes how they are checked.
PLAIN = [
    ("nothing", [], True),
    ("run", ["run"], True),
    ("file-and-dir", ["-f", "dodo.py", "-d", "proj"], True),
    ("long-options", ["--file=dodo.py", "--dir", "proj", "--process=4"], True),
    ("attached-short-value", ["-n4", "-v2", "-Pthread"], True),
    ("variables", ["manifest=other.toml", "log=json", "frozen=1"], True),
    ("continue", ["run", "-c", "-k"], True),
    ("task-name", ["mkfs:a"], False),
    ("family", ["-d", "proj", "mkfs"], False),
    ("list", ["list"], False),
    ("info", ["info", "mkfs:a"], False),
    ("clean", ["clean"], False),
    ("forget", ["forget"], False),
    ("always-execute", ["-a"], False),
    ("always-execute-long", ["--always-execute"], False),
    ("single", ["-s", "mkfs:a"], False),
    ("other-db", ["--db-file", "x.db"], False),
    ("other-backend", ["--backend=json"], False),
    ("other-reporter", ["-r", "json"], False),
    ("value-missing", ["-d"], False),
    ("run-not-first", ["-d", "proj", "run"], False),
    ("pytest-argv", ["-q", "tests/tasks"], False),
]


@pytest.mark.parametrize(("args", "plain"), [(a, p) for _, a, p in PLAIN],
                         ids=[i for i, _, _ in PLAIN])
def test_only_a_plain_run_may_skip_the_graph(args: list[str], plain: bool) -> None:
    assert plain_run(args) is plain


def _events(run, event: str) -> list[dict]:  # type: ignore[no-untyped-def,type-arg]
    return [e for e in run.events if e.get("event") == event]


@pytest.mark.slow
def test_a_stamped_no_op_still_lists_and_builds_single_tasks(registry: Registry, repo: str,
                                                             tmp_path: Path) -> None:
    world = make_world(registry, repo, tmp_path, names="ab")
    run_doit(world.project).check()
    assert (world.project / ".cache" / STAMP_NAME).is_file()
    noop = run_doit(world.project).check()
    assert noop.ran == [] and len(_events(noop, "run.unchanged")) == 1
    # Other commands see the whole graph.
    listed = run_doit(world.project, "list", "--all").check()
    assert {"mkfs:a", "mkfs:b", "flatten:a", "resolve:b"} <= set(listed.stdout.split())
    (world.project / "out/a.ext4").unlink()
    assert run_doit(world.project, "mkfs:a").check().ran == ["mkfs:a"]
    verify_outputs(world.project, "ab")
    # The stamp of a run that ended with a failure is not written.
    (world.project / "out/b.json").unlink()
    (world.project / ".cache" / STAMP_NAME).unlink()
    world.write_manifest(extra={"b": 'size = "1MiB"\n'})
    failed = run_doit(world.project)
    assert failed.returncode != 0 and failed.failed == ["mkfs:b"]
    assert not (world.project / ".cache" / STAMP_NAME).exists()


# A thousand images, as in issue 16: the two pushed images built for real, the other
# 998 names for image a with its lock entry, a hard link of its output and a record
# of their own (what a cold build would leave, without 998 mkfs runs).
COPIES = 998


def _names() -> list[str]:
    return [f"c{i:04d}" for i in range(COPIES)]


def _write_manifest(world: World, overrides: dict[str, str] | None = None) -> None:
    text = "".join(f'[images.{n}]\nref = "{world.ref(n)}"\n' for n in "ab")
    for name in _names():
        text += f'[images.{name}]\nref = "{world.ref("a")}"\n' + (overrides or {}).get(name, "")
    (world.project / "images.toml").write_text(text)


def _seed_copies(world: World) -> None:
    project = world.project
    lock_path = project / "images.lock.json"
    lock = json.loads(lock_path.read_text())
    for name in _names():
        lock["images"][name] = lock["images"]["a"]
    lock_path.write_text(json.dumps(lock, indent=2, sort_keys=True) + "\n")
    _write_manifest(world)
    manifest, entries = load_manifest(project / "images.toml"), read_lock(lock_path)
    tools = cached_tool_versions(project / ".cache")
    record = json.loads((project / "out/a.json").read_text())
    for name in _names():
        os.link(project / "out/a.ext4", project / f"out/{name}.ext4")
        key = build_key(mkfs_config(ImagePlan(manifest.image(name), entries[name]), tools))
        mine = {**record, "name": name, "build_key": key}
        (project / f"out/{name}.json").write_text(json.dumps(mine, indent=2, sort_keys=True))


@pytest.mark.slow
def test_no_op_of_a_thousand_images_notices_output_option_and_reference_changes(
        registry: Registry, repo: str, tmp_path: Path) -> None:
    world = make_world(registry, repo, tmp_path, names="ab")
    run_doit(world.project).check()
    _seed_copies(world)
    # The first run records the copies in doit's database (their builds are found done).
    first = run_doit(world.project, timeout=600).check()
    assert sorted(first.ran) == sorted([f"flatten:{n}" for n in _names()]
                                       + [f"mkfs:{n}" for n in _names()])
    assert {e["outcome"] for e in first.events if e.get("event") == "task.done"
            and e["task"].startswith("mkfs:")} == {"already built"}
    stamp = world.project / ".cache" / STAMP_NAME
    assert stamp.is_file()
    dep_file = (world.project / ".cache/doit.db").read_bytes()

    def noop() -> None:
        run = run_doit(world.project, audit=True).check()
        assert run.ran == []
        [unchanged] = _events(run, "run.unchanged")
        assert unchanged["images"] == COPIES + 2
        [finished] = _events(run, "run.finished")
        # resolve, flatten and mkfs per image, fetch-blob and unpack per layer (3).
        assert finished["up_to_date"] == 3 * (COPIES + 2) + 2 * 3
        cache = world.project / ".cache"
        assert run.opened(cache / "blobs") == run.opened(cache / "layers") == []
        assert [p for p in run.opened(world.project / "out") if p.endswith(".ext4")] == []
        assert run.connects == []
        assert "pipeline.tasks.mkfs" in run.modules
        assert [m for m in run.modules if m.split(".")[0] in ("httpx", "zstandard", "isal")
                or m in ("pipeline.ext4.build", "pipeline.registry.client",
                         "pipeline.tasks.workers")] == []

    noop()
    assert (world.project / ".cache/doit.db").read_bytes() == dep_file

    # A deleted output: exactly its image is rebuilt.
    (world.project / "out/c0500.ext4").unlink()
    assert run_doit(world.project).check().ran == ["mkfs:c0500"]
    noop()

    # A changed option: exactly that image is rebuilt, with the option.
    _write_manifest(world, {"c0700": 'size = "96MiB"\n'})
    assert run_doit(world.project).check().ran == ["mkfs:c0700"]
    assert (world.project / "out/c0700.ext4").stat().st_size == 96 << 20
    noop()

    # A changed reference: resolved, and its new top layer fetched, unpacked and built.
    new_top = top_layer("c0900", "2")
    world.push("c0900", "v2", new_top)
    _write_manifest(world, {"c0700": 'size = "96MiB"\n'})
    text = (world.project / "images.toml").read_text().replace(
        f'[images.c0900]\nref = "{world.ref("a")}"', f'[images.c0900]\nref = "'
        f'{world.ref("c0900", "v2")}"')
    (world.project / "images.toml").write_text(text)
    bumped = run_doit(world.project).check()
    assert sorted(bumped.ran) == sorted(["resolve:c0900", f"fetch-blob:{new_top.digest}",
                                         f"unpack:{new_top.digest}", "flatten:c0900",
                                         "mkfs:c0900"])
    record = json.loads((world.project / "out/c0900.json").read_text())
    assert record["ref"] == world.ref("c0900", "v2")
    verify_outputs(world.project, ["a", "b", "c0500", "c0700", "c0900"])
