"""pipeline.tasks.workers: jobs in worker processes, errors back in the parent, no orphans.

Jobs are module-level functions of this module (workers import it by name).
A forkserver started by one test is reused by the next (it lives as long as
the process), which is also how a doit run uses it: one pool per process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from pipeline.errors import LayerError, PipelineError, ToolError
from pipeline.tasks.workers import WorkerPool, pool_size

REPO = Path(__file__).resolve().parents[2]


def pid() -> int:
    return os.getpid()


def raise_layer_error(member: str) -> None:
    raise LayerError("sha256:" + "ab" * 32, "a hard link points at nothing", member=member)


def raise_tool_error() -> None:
    raise ToolError("debugfs", "set_inode_field failed", returncode=1, stderr="a\nb\nc\nd\n")


def raise_bug() -> None:
    raise KeyError("a bug")


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def pool() -> Iterator[WorkerPool]:
    workers = WorkerPool(2)
    yield workers
    workers.close()


@pytest.mark.parametrize("jobs, cpus, size", [(4, 2, 2), (1, 2, 1), (4, 1, 1), (2, 8, 2),
                                              (8, None, 1)])
def test_pool_size_is_jobs_but_no_more_than_cores(monkeypatch: pytest.MonkeyPatch, jobs: int,
                                                  cpus: int | None, size: int) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert pool_size(jobs) == size


def test_jobs_run_in_other_processes(pool: WorkerPool) -> None:
    assert pool.run(pid) != os.getpid()
    assert pool.run(sum, [1, 2, 3]) == 6


def test_a_pipeline_error_comes_back_whole(pool: WorkerPool) -> None:
    with pytest.raises(LayerError) as layer:
        pool.run(raise_layer_error, "etc/passwd")
    assert str(layer.value) == (f"layer sha256:{'ab' * 32}, entry 'etc/passwd': a hard link"
                                " points at nothing")
    assert (layer.value.layer, layer.value.member) == ("sha256:" + "ab" * 32, "etc/passwd")
    with pytest.raises(ToolError) as tool:
        pool.run(raise_tool_error)
    assert str(tool.value) == "debugfs: set_inode_field failed (exit status 1): b | c | d"
    assert (tool.value.tool, tool.value.returncode) == ("debugfs", 1)


def test_a_bug_keeps_its_type_and_the_workers_traceback(pool: WorkerPool) -> None:
    with pytest.raises(KeyError) as bug:
        pool.run(raise_bug)
    assert "raise_bug" in str(bug.value.__cause__)  # concurrent.futures' _RemoteTraceback


def test_a_dead_worker_fails_its_step_and_the_next_step_gets_a_new_pool(
        pool: WorkerPool) -> None:
    with pytest.raises(PipelineError) as dead:
        pool.run(die)
    assert str(dead.value) == ("a worker process died while running this step (killed, or out"
                               " of memory?); run doit again")
    assert pool.run(sum, [1, 2]) == 3


def test_a_closed_pool_takes_no_jobs(pool: WorkerPool) -> None:
    pool.close()
    with pytest.raises(RuntimeError, match="internal error: a job was given to a closed"):
        pool.run(pid)


ORPHAN = """
import os, sys, time
sys.path.insert(0, sys.argv[1])
from pipeline.tasks.workers import WorkerPool
pool = WorkerPool(2)
print(pool.run(os.getpid), flush=True)
time.sleep(600)
"""


def alive(process: int) -> bool:
    try:
        os.kill(process, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{process}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, just not reaped


def test_workers_die_with_the_run(tmp_path: Path) -> None:
    # Only the parent is killed, not its process group: its workers must not live
    # on, writing into a cache whose run lock the kernel just released.
    parent = subprocess.Popen([sys.executable, "-c", ORPHAN, str(REPO)], stdout=subprocess.PIPE,
                              text=True)
    assert parent.stdout is not None
    worker = int(parent.stdout.readline())
    assert alive(worker)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 30
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(worker), "a worker outlived its run"


def log_a_warning() -> None:
    structlog.get_logger("pipeline.test").warning("staging.copied", files=3)


LOGS = """
import sys
sys.path.insert(0, sys.argv[1])
import structlog
from pipeline.tasks.workers import WorkerPool
from tests.tasks.test_workers import log_a_warning
pool = WorkerPool(2, log_mode="json")
with structlog.contextvars.bound_contextvars(task="flatten:a", image="a"):
    pool.run(log_a_warning)
pool.close()
"""


def test_workers_log_like_the_run_with_the_steps_fields() -> None:
    proc = subprocess.run([sys.executable, "-c", LOGS, str(REPO)], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")]
    assert [(e["event"], e["level"], e["task"], e["image"], e["files"]) for e in events] == [
        ("staging.copied", "warning", "flatten:a", "a", 3)]
    assert proc.stdout == ""
