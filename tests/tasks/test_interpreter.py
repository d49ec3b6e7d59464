"""tasks.interpreter: the doit process's switch interval and collector; a test session's kept."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
from pathlib import Path

import structlog

from pipeline.tasks import load_pipeline
from pipeline.tasks.interpreter import SWITCH_INTERVAL_S, YOUNG_OBJECTS

REPO = Path(__file__).resolve().parents[2]


def test_a_tuned_interpreter_freezes_what_is_loaded_and_everything_at_exit() -> None:
    code = textwrap.dedent("""\
        import atexit, gc, sys
        # Registered first, so it runs last: after the exit handler tune_for_run adds.
        atexit.register(lambda: print("exit", len(gc.get_objects()), gc.get_freeze_count()))
        from pipeline.tasks.interpreter import tune_for_run
        frozen_before = gc.get_freeze_count()
        tune_for_run()
        print("run", gc.get_threshold()[0], sys.getswitchinterval(), frozen_before,
              gc.get_freeze_count())
        made_after = [[n] for n in range(20_000)]
        """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    run, exit_ = out[0].split(), out[1].split()
    assert run[:3] == ["run", str(YOUNG_OBJECTS), str(SWITCH_INTERVAL_S)]
    assert int(run[3]) == 0 and int(run[4]) > 1000        # the modules loaded so far
    # At exit the lists made after the first freeze are frozen too: the collector that
    # clears the modules walks (next to) nothing.
    assert exit_[0] == "exit" and int(exit_[1]) < 1000 and int(exit_[2]) > 20_000


def test_loading_the_tasks_in_a_test_session_leaves_its_interpreter_alone(
        tmp_path: Path) -> None:
    (tmp_path / "images.toml").write_text('[images.a]\nref = "127.0.0.1:1/a:v1"\n')
    structlog_config = structlog.get_config()
    before = (gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count())
    try:
        namespace = load_pipeline(tmp_path / "images.toml")
    finally:
        structlog.configure(**structlog_config)
    assert "task_mkfs" in namespace
    assert (gc.get_threshold(), sys.getswitchinterval(), gc.get_freeze_count()) == before
