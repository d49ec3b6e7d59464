"""The doit reporter: one structured log line per finished task, one line per failure.

doit's console reporter prints every task, up to date or not, and repeats
a failure's traceback; in CI that buries the one line that matters. This
reporter:

- logs ``task.done`` (with seconds) for every task that ran, ``task.failed``
  for every failure, and ``task up to date`` at debug level, through
  structlog, so CI gets one JSON object per finished step and tests can count
  what ran;
- writes one line per failed task to doit's output stream::

      FAILED mkfs:debian (debian): ext4: the tree needs 612 MiB, size is 512 MiB

  naming the task, the images it builds for and the reason; a PipelineError
  carries its own one-sentence message (``steps.run_step`` made it a
  TaskFailed), anything else is a bug and keeps its traceback;
- does not repeat tasks that were skipped because a dependency failed (they
  are counted in the summary), so one broken image gives one line;
- ends with a summary line: how many tasks ran, were up to date, failed.
"""

from __future__ import annotations

import time
from typing import Any, TextIO

import structlog
from doit.exceptions import BaseFail, TaskFailed, UnmetDependency
from doit.reporter import ConsoleReporter

__all__ = ["PipelineReporter"]

log = structlog.get_logger("pipeline.run")


def _images(task: Any) -> list[str]:
    meta = getattr(task, "meta", None) or {}
    return list(meta.get("images", ()))


def _real(task: Any) -> bool:
    """Tasks with actions; group tasks and delayed-creation placeholders are not counted."""
    return bool(task.actions) and not task.name.startswith("_")


class PipelineReporter(ConsoleReporter):  # type: ignore[misc]  # doit is untyped
    desc = "rootfs-pipeline: structured log per finished task, one line per failure"

    def __init__(self, outstream: TextIO, options: dict[str, Any]) -> None:
        super().__init__(outstream, options)
        self.ran = 0
        self.up_to_date = 0
        self.failed = 0
        self.blocked = 0
        self._started: dict[str, float] = {}
        self._run_started = time.monotonic()

    def execute_task(self, task: Any) -> None:
        if _real(task):
            self._started[task.name] = time.monotonic()
            log.debug("task.started", task=task.name, images=_images(task))

    def add_success(self, task: Any) -> None:
        if not _real(task):
            return
        # The step logged its own "task.done" line (steps.run_step), with
        # what it did; here we only count.
        self.ran += 1
        self._started.pop(task.name, None)

    def skip_uptodate(self, task: Any) -> None:
        if _real(task):
            self.up_to_date += 1
            log.debug("task.up_to_date", task=task.name)

    def skip_ignore(self, task: Any) -> None:
        if _real(task):
            log.info("task.ignored", task=task.name)

    def add_failure(self, task: Any, fail: BaseFail) -> None:
        if isinstance(fail, UnmetDependency):
            # A group task, or a task whose dependency failed: the failure
            # itself was already reported once.
            if _real(task):
                self.blocked += 1
                log.info("task.not_run", task=task.name, reason=f"{fail.message} failed")
            return
        self.failed += 1
        images = _images(task)
        who = f" ({', '.join(images)})" if images else ""
        if isinstance(fail, TaskFailed):
            self.write(f"FAILED {task.name}{who}: {fail.message}\n")
            log.error("task.failed", task=task.name, images=images, error=fail.message)
        else:
            # Not a PipelineError: a bug, or doit itself failing; keep the traceback.
            self.write(f"ERROR {task.name}{who}: {fail.get_msg()}\n")
            log.error("task.error", task=task.name, images=images, error=fail.message,
                      traceback="".join(fail.traceback))
        self._started.pop(task.name, None)

    def runtime_error(self, msg: str) -> None:
        self.runtime_errors.append(msg)

    def complete_run(self) -> None:
        for msg in self.runtime_errors:
            self.write(f"ERROR: {msg}\n")
        seconds = round(time.monotonic() - self._run_started, 3)
        parts = [f"{self.ran} ran", f"{self.up_to_date} up to date"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.blocked:
            parts.append(f"{self.blocked} not run because a dependency failed")
        log.info("run.finished", ran=self.ran, up_to_date=self.up_to_date, failed=self.failed,
                 not_run=self.blocked, seconds=seconds)
        if self.failed or self.blocked or self.runtime_errors:
            self.write(f"tasks: {', '.join(parts)}\n")
