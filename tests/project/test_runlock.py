"""One pipeline process per cache directory: the second is refused, a dead holder is not."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import BusyError
from pipeline.project.runlock import RunLock, hold_directory

HOLDER = """
import sys, time
from pipeline.project.runlock import hold_directory
hold_directory(sys.argv[1])
print("held", flush=True)
time.sleep(60)
"""


def start_holder(directory: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_second_process_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    try:
        with pytest.raises(BusyError) as exc:
            RunLock(tmp_path).acquire()
        assert str(exc.value) == (
            f"{tmp_path} is in use by another pipeline run (pid {holder.pid}); wait for it "
            "to finish, or give this run its own cache_dir")
    finally:
        holder.kill()
        holder.wait()


def test_lock_of_a_killed_holder_is_free(tmp_path: Path) -> None:
    holder = start_holder(tmp_path)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    lock = RunLock(tmp_path)
    lock.acquire()
    assert (tmp_path / "run.lock").read_text() == f"{os.getpid()}\n"
    lock.release()


def test_hold_directory_is_reentrant_in_one_process(tmp_path: Path) -> None:
    first = hold_directory(tmp_path / "cache")
    assert hold_directory(tmp_path / "cache") is first
    assert first.held
    first.release()
    second = hold_directory(tmp_path / "cache")
    assert second is not first and second.held
    second.release()
