"""The remote cache's key and task graph: task dicts and values, no doit run, no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from doit.task import Task
from doit.tools import config_changed

from pipeline.project.lockfile import read_lock
from pipeline.tasks import build_tasks
from pipeline.tasks.plan import plan_run
from pipeline.tasks.remote import UnlessBuilt, cache_key, cache_tag, key_material
from tests.tasks.test_tasks import BASE, LOCKED, MANIFEST, context, layer, lock, tasks_by_name

REMOTE = '[cache]\nremote = "cache.test:5000/team/rootfs-cache"\n'
TOOLS = {"mkfs.ext4": "1.47.0", "debugfs": "1.47.0"}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "images.toml").write_text(MANIFEST)
    lock(tmp_path, **LOCKED)
    return tmp_path


def keys(project: Path, text: str, tools: dict[str, str] = TOOLS) -> dict[str, str]:
    ctx = context(project, text)
    plan = plan_run(ctx.manifest, read_lock(ctx.lock_path))
    return {image.name: cache_key(image, tools) for image in plan.images}


def test_the_key_comes_from_the_lock_and_changes_with_what_decides_the_bytes(
        project: Path) -> None:
    base = keys(project, REMOTE + MANIFEST)
    assert len(set(base.values())) == 3  # other layers, other platform
    assert keys(project, REMOTE + MANIFEST) == base  # the same from the same lock
    # The remote cache settings are not part of what the bytes are.
    assert keys(project, MANIFEST) == base
    sized = keys(project, REMOTE + MANIFEST.replace('size = "64MiB"', 'size = "128MiB"'))
    assert sized["b"] != base["b"] and sized["a"] == base["a"]
    # The native writer's bytes do not follow the host's e2fsprogs; mkfs.ext4's do.
    assert keys(project, REMOTE + MANIFEST, {**TOOLS, "mkfs.ext4": "1.47.2"}) == base
    with_mkfs = REMOTE + MANIFEST.replace("jobs = 3\n", 'jobs = 3\nbuilder = "mkfs"\n')
    mkfs_keys = keys(project, with_mkfs)
    assert not set(mkfs_keys.values()) & set(base.values())
    newer = keys(project, with_mkfs, {**TOOLS, "mkfs.ext4": "1.47.2"})
    assert not set(newer.values()) & set(mkfs_keys.values())
    # The reference text alone does not decide the bytes (a retag is still a hit).
    ctx = context(project, REMOTE + MANIFEST)
    image = plan_run(ctx.manifest, read_lock(ctx.lock_path)).images[0]
    material = key_material(image, TOOLS)
    assert image.spec.ref_text not in str(material)
    assert material["platform"] == "linux/amd64" and material["key_version"] == 1
    assert cache_tag(base["a"]) == "rk-" + base["a"] and len(cache_tag(base["a"])) == 67


def test_a_key_is_the_same_in_another_process(project: Path) -> None:
    code = ("import sys; from tests.tasks.test_remote import keys, REMOTE; "
            "from tests.tasks.test_tasks import MANIFEST; from pathlib import Path; "
            "print(sorted(keys(Path(sys.argv[1]), REMOTE + MANIFEST).items()))")
    runs = {subprocess.run([sys.executable, "-c", code, str(project)], capture_output=True,
                           text=True, check=True, env={"PYTHONHASHSEED": seed,
                                                       "PATH": "/usr/bin:/bin"},
                           cwd=Path(__file__).resolve().parents[2]).stdout
            for seed in ("1", "2")}
    assert len(runs) == 1 and runs.pop().count("'a'") == 1


def test_with_a_remote_cache_each_image_is_looked_up_before_its_layers(
        project: Path) -> None:
    tasks = tasks_by_name(build_tasks(context(project, REMOTE + MANIFEST)))
    assert [n for n in tasks if n.startswith("remote")] == [
        "remote", "remote:a", "remote:b", "remote:c"]
    base = layer(BASE).digest
    assert tasks[f"fetch-blob:{base}"]["task_dep"] == ["remote:a", "remote:b", "remote:c"]
    top_b = layer(b"top b").digest
    assert tasks[f"fetch-blob:{top_b}"]["task_dep"] == ["remote:b"]
    for name in (f"fetch-blob:{base}", f"unpack:{base}", "flatten:a"):
        (check,) = tasks[name]["uptodate"]
        assert isinstance(check, UnlessBuilt)
    # mkfs shares what it built: its step pushes, and doit keeps what was pushed.
    assert tasks["mkfs:a"]["actions"][0][1][0].__name__ == "share_step"


def test_without_a_remote_cache_the_graph_is_unchanged(project: Path) -> None:
    tasks = tasks_by_name(build_tasks(context(project)))
    assert not [n for n in tasks if n.startswith("remote")]
    assert tasks["mkfs:a"]["actions"][0][1][0].__name__ == "mkfs_step"



@pytest.mark.parametrize(("built", "conditions", "expected"), [
    (True, [False], True),
    (False, [True, (lambda task, values, x: x == 1, [1], {})], True),
    (False, [(lambda path: path == "p", ["p"], {}), (lambda task: task.name == "t")], True),
    (False, [(lambda path: path == "p", ["q"], {})], False),
    (False, [config_changed({"a": 1})], False),
], ids=["built-wins", "task-values-args", "plain-args", "false-condition", "no-values"])
def test_unless_built_runs_the_task_checks_as_doit_would(built: bool, conditions: list[Any],
                                                         expected: bool) -> None:
    task = Task("t", None)
    check = UnlessBuilt(lambda: built, conditions)
    check.configure_task(task)
    assert check(task, {}) is expected


def test_creating_every_task_with_a_remote_cache_loads_no_network_client(project: Path) -> None:
    from tests.tasks.test_tasks import LOAD_DODO, REPO, heavy_loaded, loaded_modules

    (project / "images.toml").write_text(REMOTE + MANIFEST)
    (project / ".cache").mkdir()
    from pipeline.tasks.toolcache import cached_tool_versions

    cached_tool_versions(project / ".cache")
    found = loaded_modules(LOAD_DODO, str(REPO / "dodo.py"), cwd=project)
    assert "pipeline.tasks.remote" in found and "pipeline.tasks.share" in found
    assert heavy_loaded(found) == []
