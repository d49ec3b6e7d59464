"""End to end, day-to-day use (issue 15): a restored CI cache, the entry point,
another project's dodo.py, a shared cache, what a run reports."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.harness.doitrun import World, make_world, run_doit
from tests.harness.registry import Registry


@pytest.fixture
def world(registry: Registry, repo: str, tmp_path: Path) -> World:
    return make_world(registry, repo, tmp_path, names="ab")


@pytest.mark.slow
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
