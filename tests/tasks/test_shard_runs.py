"""Sharded runs end to end: ``doit shard=K/N`` runners against the real registry.

Each runner starts from the same manifest and lock (a CI fan-out from one
commit) in its own directory; together they build every image once, each
image exactly as a whole run builds it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from pipeline.project.config import load_manifest
from pipeline.project.lockfile import read_lock
from pipeline.project.shards import Shard
from pipeline.tasks.selection import shard_images
from tests.harness.doitrun import (
    World,
    doit_command,
    doit_env,
    make_world,
    run_doit,
    sha256_file,
    verify_outputs,
)
from tests.harness.registry import Registry

# End to end through the real doit and registry: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow

NAMES = "abcd"


@pytest.fixture
def world(registry: Registry, repo: str, tmp_path: Path) -> World:
    world = make_world(registry, repo, tmp_path, names=NAMES)
    # The commit every runner checks out: the manifest and its lock.
    run_doit(world.project, "resolve").check()
    return world


def _checkout(world: World, where: Path) -> Path:
    where.mkdir()
    for name in ("images.toml", "images.lock.json"):
        shutil.copy2(world.project / name, where / name)
    return where


def _shard(project: Path, shard: Shard) -> list[str]:
    manifest = load_manifest(project / "images.toml", environ={})
    return sorted(shard_images(manifest, read_lock(project / "images.lock.json"), shard))


def _cache_env(world: World) -> dict[str, str]:
    return {"ROOTFS_REMOTE_CACHE": f"{world.registry.host}/{world.namespace}/rootfs-cache",
            "ROOTFS_REMOTE_CACHE_PUSH": "1"}


def _cache_tags(world: World) -> list[str]:
    url = f"{world.registry.url}/v2/{world.namespace}/rootfs-cache/tags/list"
    return sorted(httpx.get(url).json().get("tags") or [])


def test_two_concurrent_shards_build_every_image_once_and_collect_finds_them(
        world: World, tmp_path: Path) -> None:
    """The fan-out of issue 12: shard runners at once, one registry as remote cache."""
    runners = [_checkout(world, tmp_path / f"runner{k}") for k in (1, 2)]
    env = doit_env(_cache_env(world))
    procs = [subprocess.Popen(doit_command(where, f"shard={k}/2"), cwd=where, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for k, where in enumerate(runners, start=1)]
    outputs = [proc.communicate(timeout=300) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err[-4000:]
    built = []
    for k, (where, (_, err)) in enumerate(zip(runners, outputs, strict=True), start=1):
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        mine = sorted(e["task"].partition(":")[2] for e in events
                      if e.get("event") == "task.done" and e["task"].startswith("mkfs:"))
        assert mine == _shard(world.project, Shard(k, 2))
        assert sorted(p.stem for p in (where / "out").glob("*.ext4")) == mine
        verify_outputs(where, mine)
        built += mine
    assert sorted(built) == sorted(NAMES), "every image built once, by one runner"
    # One artifact per key in the registry: one rk- tag per image, no more.
    assert len([t for t in _cache_tags(world) if t.startswith("rk-")]) == len(NAMES)
    # The fan-in: a third checkout finds every image, and fetches the same bytes.
    fan_in = _checkout(world, tmp_path / "collect")
    run_doit(fan_in, "collect", "fetch=1", env=_cache_env(world)).check()
    index = json.loads((fan_in / "out" / "index.json").read_text())
    assert sorted(index) == sorted(NAMES)
    for where in runners:
        for image in (where / "out").glob("*.ext4"):
            assert sha256_file(image) == sha256_file(fan_in / "out" / image.name)
    # The same bytes as one whole local run without any cache.
    run_doit(world.project).check()
    for image in (fan_in / "out").glob("*.ext4"):
        assert sha256_file(image) == sha256_file(world.project / "out" / image.name)


def test_a_shard_rerun_is_a_no_op_and_a_whole_run_builds_only_the_rest(
        world: World, tmp_path: Path) -> None:
    where = _checkout(world, tmp_path / "runner")
    first = _shard(where, Shard(1, 2))
    run_doit(where, "shard=1/2").check()
    again = run_doit(where, "shard=1/2", audit=True).check()
    assert again.ran == []
    assert again.connects == []
    # The summary speaks of the shard's images only.
    [summary] = [e for e in again.events if e["event"] == "run.summary"]
    assert sorted(row["image"] for row in summary["images"]) == first
    whole = run_doit(where).check()
    rest = sorted(t.partition(":")[2] for t in whole.ran if t.startswith("mkfs:"))
    assert rest == sorted(set(NAMES) - set(first))
