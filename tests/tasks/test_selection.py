"""Shards of a CI fan-out through the command line: ``doit plan shards=N`` and ``shard=K/N``.

No network: the manifest names unreachable registries and the lock holds
every image, so each run below decides from the lock alone (the partition
itself is tested in tests/project/test_shards.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.project.config import load_manifest
from pipeline.project.lockfile import read_lock, update_lock
from pipeline.project.shards import Shard
from pipeline.tasks import make_context
from pipeline.tasks.noop import state_key
from pipeline.tasks.selection import plan_document, shard_images
from tests.harness.doitrun import run_rootfs
from tests.project.test_shards import fleet

IMAGES = 12


@pytest.fixture
def project(tmp_path: Path) -> Path:
    entries = fleet(IMAGES)
    # Port 9 (discard) on loopback: any request would fail the run.
    (tmp_path / "images.toml").write_text("".join(
        f'[images.{name}]\nref = "127.0.0.1:9/{name}:1"\n\n' for name in entries))
    locked = {name: type(e)(ref=f"127.0.0.1:9/{name}:1", platform=e.platform,
                            resolved=e.resolved) for name, e in entries.items()}
    update_lock(tmp_path / "images.lock.json", lambda _: dict(locked))
    return tmp_path


def _expected(project: Path, total: int) -> dict[str, object]:
    manifest = load_manifest(project / "images.toml", environ={})
    return plan_document(manifest, read_lock(project / "images.lock.json"), total)


def test_plan_prints_one_json_matrix_and_nothing_else(project: Path) -> None:
    run = run_rootfs(project, "plan", "shards=3", env={"PYTHONHASHSEED": "0"}).check()
    again = run_rootfs(project, "plan", "shards=3", env={"PYTHONHASHSEED": "1"}).check()
    assert again.stdout == run.stdout                    # the same in every process
    assert run.stdout.count("\n") == 1, run.stdout      # one line for $GITHUB_OUTPUT
    document = json.loads(run.stdout)
    assert document == _expected(project, 3)
    shards = [entry["shard"] for entry in document["include"]]
    assert shards == ["1/3", "2/3", "3/3"]
    names = [n for entry in document["include"] for n in entry["images"]]
    assert sorted(names) == sorted(fleet(IMAGES)), "every image in exactly one shard"
    assert "Traceback" not in run.stderr


def test_images_the_lock_does_not_hold_yet_are_placed_too(project: Path) -> None:
    with open(project / "images.toml", "a") as f:
        f.write('[images.newcomer]\nref = "127.0.0.1:9/newcomer:1"\n')
    document = json.loads(run_rootfs(project, "plan", "shards=4").check().stdout)
    placed = [entry["shard"] for entry in document["include"] if "newcomer" in entry["images"]]
    assert len(placed) == 1
    assert document == _expected(project, 4)


@pytest.mark.parametrize(("args", "env", "line"), [
    (("plan",), {}, "ERROR: doit plan: give the number of shards, e.g. doit plan shards=4"),
    (("plan", "shards=0"), {}, "ERROR: shards='0': the number of shards must be a whole "
     "number from 1 to 1024; give e.g. doit plan shards=4"),
    (("shards=3",), {}, "ERROR: shards=3: only `doit plan` reads it (doit plan shards=3); a "
     "runner builds its shard with shard=K/N"),
    (("shard=3/2",), {}, "ERROR: shard=: shard index in '3/2' must be between 1 and 2; give "
     "e.g. shard=1/2"),
    (("shard=1of2",), {}, "ERROR: shard=: '1of2' is not of the form K/N; give e.g. shard=1/4"),
    ((), {"JOB_COMPLETION_INDEX": "0"}, "ERROR: JOB_COMPLETION_INDEX/ROOTFS_SHARDS: "
     "JOB_COMPLETION_INDEX is set but ROOTFS_SHARDS is not; set ROOTFS_SHARDS to the Job's "
     "completions"),
], ids=["plan-without-count", "zero-shards", "shards-without-plan", "index-past-count",
        "not-k-of-n", "kubernetes-without-count"])
def test_bad_shard_settings_are_one_line_and_exit_3(project: Path, args: tuple[str, ...],
                                                    env: dict[str, str], line: str) -> None:
    run = run_rootfs(project, *args, env=env)
    assert run.returncode == 3, run.stderr
    assert run.stderr.strip().splitlines() == [line]
    assert run.stdout == ""


@pytest.mark.parametrize("command", ["list", "info", "help"])
def test_looking_at_the_plan_task_needs_no_shard_count(project: Path, command: str) -> None:
    run = run_rootfs(project, command, "plan")
    # doit info exits 1 for a task that would run (plan always would): not an error here.
    assert run.returncode in ((0, 1) if command == "info" else (0,)), run.stderr
    assert "ERROR" not in run.stderr and "plan" in run.stdout


def _shard_of(project: Path, shard: Shard) -> frozenset[str]:
    manifest = load_manifest(project / "images.toml", environ={})
    return shard_images(manifest, read_lock(project / "images.lock.json"), shard)


@pytest.mark.parametrize(("env", "shard"), [
    ({"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3"}, Shard(2, 3)),
    ({"JOB_COMPLETION_INDEX": "0", "ROOTFS_SHARDS": "3"}, Shard(1, 3)),
    ({"JOB_COMPLETION_INDEX": "2", "ROOTFS_SHARDS": "3"}, Shard(3, 3)),
], ids=["gitlab", "kubernetes-first", "kubernetes-last"])
def test_the_ci_engines_variables_choose_the_shard(project: Path, env: dict[str, str],
                                                   shard: Shard) -> None:
    # frozen: the lock holds every image, so resolving is up to date and nothing is asked.
    run = run_rootfs(project, "resolve", "frozen=1", env=env).check()
    [event] = [e for e in run.events if e["event"] == "run.shard"]
    images = _shard_of(project, shard)
    assert event["shard"] == str(shard) and event["images"] == len(images)
    assert event["of"] == IMAGES
    [finished] = [e for e in run.events if e["event"] == "run.finished"]
    assert finished["up_to_date"] == len(images)      # one resolve task per image of the shard


def test_the_command_line_wins_over_the_ci_variables(project: Path) -> None:
    run = run_rootfs(project, "resolve", "frozen=1", "shard=1/2",
                     env={"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "2"}).check()
    assert [e["shard"] for e in run.events if e["event"] == "run.shard"] == ["1/2"]


def test_a_task_of_another_shards_image_is_refused(project: Path) -> None:
    other = sorted(_shard_of(project, Shard(2, 2)))[0]
    run = run_rootfs(project, f"mkfs:{other}", "shard=1/2")
    assert run.returncode == 3
    assert run.stderr.strip().splitlines()[-1] == (
        f"ERROR: task='mkfs:{other}' is not valid: expected an image of shard 1/2 "
        f"({len(_shard_of(project, Shard(1, 2)))} images); {other!r} is in another shard: "
        "run without shard= to build it here")


def test_shards_cover_the_manifest_once(project: Path) -> None:
    for total in (1, 2, 5, IMAGES, IMAGES + 3):
        parts = [_shard_of(project, Shard(k, total)) for k in range(1, total + 1)]
        assert sum(len(p) for p in parts) == IMAGES
        assert frozenset().union(*parts) == frozenset(fleet(IMAGES))


def test_a_no_op_of_one_shard_is_not_a_no_op_of_another(project: Path) -> None:
    ctx = make_context(project / "images.toml", environ={})
    keys = set()
    for shard in (None, Shard(1, 2), Shard(2, 2), Shard(1, 3)):
        ctx.shard = shard
        keys.add(state_key(ctx, {}))
    assert len(keys) == 4
