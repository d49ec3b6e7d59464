"""``doit list`` of the task families builds no per-image task, and prints what the
whole graph would."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tasks.listing import families_only
from tests.harness.doitrun import make_world, run_doit
from tests.harness.registry import Registry

CASES = [
    ("list", ["list"], True),
    ("quiet-private", ["list", "-q", "--private"], True),
    ("file-dir-sort", ["list", "-f", "dodo.py", "--dir=proj", "--sort", "definition"], True),
    ("attached-short", ["list", "-fdodo.py", "-dproj"], True),
    ("variable", ["list", "manifest=other.toml"], True),
    ("all", ["list", "--all"], False),
    ("all-short", ["list", "-s"], False),
    ("status", ["list", "--status"], False),
    ("deps", ["list", "--deps"], False),
    ("task-name", ["list", "mkfs"], False),
    ("value-missing", ["list", "--sort"], False),
    ("unknown-option", ["list", "--frobnicate"], False),
    ("run", [], False),
    ("info", ["info", "mkfs:a"], False),
]


@pytest.mark.parametrize(("args", "families"), [(a, f) for _, a, f in CASES],
                         ids=[i for i, _, _ in CASES])
def test_only_a_list_of_the_families_skips_the_graph(args: list[str], families: bool) -> None:
    assert families_only(args) is families


@pytest.mark.slow
def test_the_families_list_is_what_the_whole_graph_lists(registry: Registry, repo: str,
                                                         tmp_path: Path) -> None:
    world = make_world(registry, repo, tmp_path, names="ab")
    run_doit(world.project).check()
    fast = run_doit(world.project, "list").check()
    names = [line.split()[0] for line in fast.stdout.splitlines()]
    assert {"resolve", "mkfs", "gc", "prune", "update"} <= set(names)
    # Naming every task takes the whole graph: the same lines, docs included.
    full = run_doit(world.project, "list", *names).check()
    assert full.stdout == fast.stdout
    every = [line.split()[0] for line in
             run_doit(world.project, "list", "--all").check().stdout.splitlines()]
    assert "mkfs:a" in every and [n for n in every if ":" not in n] == names
