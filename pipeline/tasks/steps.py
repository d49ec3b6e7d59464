"""The one place where a pipeline step meets doit.

Every task action is ``(run_step, [step, ctx, *args], {"task": ..., ...})``:
``run_step`` binds the task name, image(s) and digest to every log line the
step writes, takes the cache in shared mode (so ``gc`` never runs under a
build), and turns a PipelineError into doit's ``TaskFailed`` carrying the
error's one-sentence message. Anything else is a bug and propagates, so doit
shows its traceback.

A finished step logs exactly one ``task.done`` line at info level; what the
step wants said about its work (bytes, rate, output, ...) it hands to
``note(...)``, which adds the fields to that line instead of logging its own.
Library modules log their details at debug level, so a CI log holds one line
per finished step.

The steps themselves are plain functions of the run context and values from
the plan; they run and test without doit.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from typing import Any

import structlog
from doit.exceptions import TaskFailed

from pipeline.base.log import bound
from pipeline.errors import PipelineError
from pipeline.tasks.context import RunContext

__all__ = ["run_step", "action", "note", "group", "IO"]

log = structlog.get_logger("pipeline.run")

# Fields for the running step's "task.done" line; one dict per step, per
# thread (doit's thread workers each run one step at a time).
_notes: ContextVar[dict[str, Any] | None] = ContextVar("pipeline_step_notes", default=None)


def note(**fields: Any) -> None:
    """Add ``fields`` to the running step's ``task.done`` line."""
    notes = _notes.get()
    if notes is None:
        raise AssertionError("internal error: note() called outside run_step")
    notes.update(fields)

# Failures of the machine rather than of the program: the user fixes them
# (free disk space, fix permissions) and reruns, so they get one line, not a
# traceback. Any other OSError is treated as a bug.
ENVIRONMENTAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM,
                                  errno.EROFS, errno.EMFILE, errno.ENFILE, errno.EIO})


def _environmental(err: OSError) -> str:
    where = f" ({err.filename})" if err.filename else ""
    return f"{err.strerror or err}{where}; fix that and run doit again"


# Thread-mode doit leaves sys.stdout broken after a Python action that
# captures output (DESIGN.md); our steps log through structlog instead.
IO = {"capture": False}


def group(doc: str, *, basename: str | None = None) -> dict[str, Any]:
    """The group task of a family (``doit mkfs`` runs every ``mkfs:<image>``).

    It has no action of its own. Without an ``uptodate`` doit would "run" it
    on every run and rewrite its row in the dep file: a write transaction and
    four fdatasyncs on a run that did nothing, slow when the disk is busy
    flushing the images just built. Its subtasks are checked as always.
    """
    task: dict[str, Any] = {"name": None, "doc": doc, "uptodate": [True]}
    if basename is not None:
        task["basename"] = basename
    return task


def run_step(step: Callable[..., Any], ctx: RunContext, *args: Any, name: str,
             images: Sequence[str], digest: str | None = None,
             exclusive: bool = False) -> Any:
    """Run ``step(ctx, *args)`` as task ``name``; return its result or a TaskFailed."""
    guard = ctx.guard.exclusive if exclusive else ctx.guard.shared
    image = ",".join(images) if images else None
    started = time.monotonic()
    notes: dict[str, Any] = {}
    token = _notes.set(notes)
    try:
        with bound(task=name, image=image, digest=digest), guard():
            try:
                result = step(ctx, *args)
            except PipelineError as err:
                log.debug("step.failed", error=str(err), error_type=type(err).__name__,
                          seconds=round(time.monotonic() - started, 3))
                return TaskFailed(str(err))
            except OSError as err:
                if err.errno not in ENVIRONMENTAL_ERRNOS:
                    raise
                return TaskFailed(_environmental(err))
            log.info("task.done", images=list(images),
                     seconds=round(time.monotonic() - started, 3), **notes)
    finally:
        _notes.reset(token)
    return result


def action(step: Callable[..., Any], ctx: RunContext, *args: Any, name: str,
           images: Sequence[str], digest: str | None = None,
           exclusive: bool = False) -> tuple[Any, ...]:
    """The doit action tuple for ``step``."""
    return (run_step, [step, ctx, *args],
            {"name": name, "images": list(images), "digest": digest, "exclusive": exclusive})
