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
- on a terminal, keeps a status part naming the long steps running (fetch,
  unpack, flatten, mkfs) with their time so far (``Ticker``);
- ends with the run's summary, one row per image of the manifest: outcome
  (built, from cache, up to date, failed, not built), output size in bytes
  and seconds. It is one ``run.summary`` event: a JSON object in CI, the
  table ``terminal.summary_table`` draws on a terminal. Images the run never
  reached (doit stops at the first failure without ``--continue``) count as
  not built, there and in the ``tasks:`` line.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import structlog
from doit.exceptions import BaseFail, TaskFailed, UnmetDependency
from doit.reporter import ConsoleReporter

from pipeline.base.escape import escape_text
from pipeline.base.terminal import Terminal
from pipeline.tasks.context import RunContext
from pipeline.tasks.steps import finished_notes

__all__ = ["PipelineReporter", "reporter_for", "LONG_STEPS"]

log = structlog.get_logger("pipeline.run")

# Steps that can take long enough to deserve a place on the status line.
LONG_STEPS = ("fetch-blob", "unpack", "flatten", "mkfs")
# A step shorter than this never shows up there: it would only flicker.
SHOW_AFTER_S = 1.0
TICK_S = 0.5
# What a ran mkfs step's outcome means for the image.
_MKFS_OUTCOMES = {"built": "built", "already built": "from cache",
                  "unchanged, record rewritten": "from cache",
                  "from remote cache": "from remote cache"}


class Ticker:
    """On a terminal: every TICK_S, the long steps running and their time so far."""

    def __init__(self, terminal: Terminal, running: dict[str, float]) -> None:
        self._terminal, self._running = terminal, running
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rootfs-ticker", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            now = time.monotonic()
            shown = [f"{name.replace(':', ' ', 1)} {now - began:.0f}s"
                     for name, began in sorted(self._running.items(), key=lambda kv: kv[1])
                     if name.split(":", 1)[0] in LONG_STEPS and now - began >= SHOW_AFTER_S]
            text = ", ".join(shown[:4]) + (f" +{len(shown) - 4}" if len(shown) > 4 else "")
            self._terminal.set_part("steps", text)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self._terminal.set_part("steps", "")


def reporter_for(ctx: RunContext) -> type[PipelineReporter]:
    """The reporter class doit instantiates, knowing this run's images and terminal."""
    return type("PipelineReporter", (PipelineReporter,), {"ctx": ctx})


def _images(task: Any) -> list[str]:
    meta = getattr(task, "meta", None) or {}
    return list(meta.get("images", ()))


def _real(task: Any) -> bool:
    """Tasks with actions; group tasks and delayed-creation placeholders are not counted."""
    return bool(task.actions) and not task.name.startswith("_")


class PipelineReporter(ConsoleReporter):  # type: ignore[misc]  # doit is untyped
    desc = "rootfs-pipeline: structured log per finished task, one line per failure"
    ctx: RunContext | None = None
    """Set by ``reporter_for``: the run's images, output directory and terminal."""

    def __init__(self, outstream: TextIO, options: dict[str, Any]) -> None:
        super().__init__(outstream, options)
        self.ran = 0
        self.up_to_date = 0
        self.failed = 0
        self.blocked = 0
        self._started: dict[str, float] = {}
        self._run_started = time.monotonic()
        # Per image: the outcome so far, and the first start / last end of its tasks.
        self._outcome: dict[str, str] = {}
        self._span: dict[str, list[float]] = {}
        self._ticker = (Ticker(self.ctx.terminal, self._started)
                        if self.ctx is not None and self.ctx.terminal.interactive else None)

    def _touch(self, task: Any, *, start: bool = False) -> None:
        now = time.monotonic()
        for image in _images(task):
            span = self._span.setdefault(image, [now, now])
            if start:
                span[0] = min(span[0], now)
            span[1] = max(span[1], now)

    def _image_outcome(self, task: Any, outcome: str) -> None:
        for image in _images(task):
            if self._outcome.get(image) not in ("failed", "not built"):
                self._outcome[image] = outcome

    def execute_task(self, task: Any) -> None:
        if _real(task):
            self._started[task.name] = time.monotonic()
            self._touch(task, start=True)
            log.debug("task.started", task=task.name, images=_images(task))

    def add_success(self, task: Any) -> None:
        if not _real(task):
            return
        # The step logged its own "task.done" line (steps.run_step), with
        # what it did; here we only count.
        self.ran += 1
        self._started.pop(task.name, None)
        self._touch(task)
        notes = finished_notes(task.name)
        if task.name.startswith("mkfs:"):
            self._image_outcome(task, _MKFS_OUTCOMES.get(str(notes.get("outcome")), "built"))

    def skip_uptodate(self, task: Any) -> None:
        if _real(task):
            self.up_to_date += 1
            if task.name.startswith("mkfs:"):
                self._image_outcome(task, "up to date")
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
                self._image_outcome(task, "not built")
                log.info("task.not_run", task=task.name, reason=f"{fail.message} failed")
            return
        self.failed += 1
        self._touch(task)
        for image in _images(task):
            self._outcome[image] = "failed"
        images = _images(task)
        who = f" ({', '.join(images)})" if images else ""
        if isinstance(fail, TaskFailed):
            # The message may quote a registry or an image: one line, no raw controls.
            self.write(f"FAILED {task.name}{who}: {escape_text(fail.message, 4000)}\n")
            log.error("task.failed", task=task.name, images=images, error=fail.message)
        else:
            # Not a PipelineError: a bug, or doit itself failing; keep the traceback.
            self.write(f"ERROR {task.name}{who}: {fail.get_msg()}\n")
            log.error("task.error", task=task.name, images=images, error=fail.message,
                      traceback="".join(fail.traceback))
        self._started.pop(task.name, None)

    def runtime_error(self, msg: str) -> None:
        self.runtime_errors.append(msg)

    def _summary(self) -> list[dict[str, Any]]:
        """One row per image of the manifest; images never reached are not built."""
        if self.ctx is None:
            return []
        rows = []
        for spec in self.ctx.images:
            outcome = self._outcome.get(spec.name, "not built")
            size = None
            if outcome != "failed":
                output = Path(self.ctx.output_dir) / f"{spec.name}.ext4"
                try:
                    size = os.stat(output).st_size  # a stat, never a read of the image
                except OSError:
                    outcome = "not built"
            span = self._span.get(spec.name)
            rows.append({"image": spec.name, "outcome": outcome, "size": size,
                         "seconds": round(span[1] - span[0], 3) if span else 0})
        return rows

    def complete_run(self) -> None:
        if self._ticker is not None:
            self._ticker.stop()
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
        # The per-image summary belongs to runs that build: one that reached an image's
        # mkfs, or failed on the way (a `doit gc` or `doit update` has nothing to list).
        rows = self._summary() if (self._outcome or self.failed) else []
        if rows:
            log.info("run.summary", images=rows, seconds=seconds)
        not_built = sum(1 for row in rows if row["outcome"] == "not built")
        if not_built:
            parts.append(f"{not_built} image{'s' if not_built != 1 else ''} not built")
        if self.failed or self.blocked or self.runtime_errors:
            self.write(f"tasks: {', '.join(parts)}\n")
