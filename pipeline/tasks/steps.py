"""The one place where a pipeline step meets doit.

Every task action is ``(run_step, [step, ctx, *args], {"task": ..., ...})``:
``run_step`` binds the task name, image(s) and digest to every log line the
step writes, takes the cache in shared mode (so ``gc`` never runs under a
build), and turns a PipelineError into doit's ``TaskFailed`` carrying the
error's one-sentence message. Anything else is a bug and propagates, so doit
shows its traceback.

The steps themselves are plain functions of the run context and values from
the plan; they run and test without doit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from doit.exceptions import TaskFailed

from ..errors import PipelineError
from ..log import bound
from .context import RunContext

__all__ = ["run_step", "action", "IO"]

log = structlog.get_logger(__name__)

# Thread-mode doit leaves sys.stdout broken after a Python action that
# captures output (DESIGN.md); our steps log through structlog instead.
IO = {"capture": False}


def run_step(step: Callable[..., Any], ctx: RunContext, *args: Any, name: str,
             images: Sequence[str], digest: str | None = None,
             exclusive: bool = False) -> Any:
    """Run ``step(ctx, *args)`` as task ``name``; return its result or a TaskFailed."""
    guard = ctx.guard.exclusive if exclusive else ctx.guard.shared
    image = ",".join(images) if images else None
    started = time.monotonic()
    with bound(task=name, image=image, digest=digest), guard():
        try:
            result = step(ctx, *args)
        except PipelineError as err:
            log.debug("step failed", error=str(err), error_type=type(err).__name__,
                      seconds=round(time.monotonic() - started, 3))
            return TaskFailed(str(err))
    return result


def action(step: Callable[..., Any], ctx: RunContext, *args: Any, name: str,
           images: Sequence[str], digest: str | None = None,
           exclusive: bool = False) -> tuple[Any, ...]:
    """The doit action tuple for ``step``."""
    return (run_step, [step, ctx, *args],
            {"name": name, "images": list(images), "digest": digest, "exclusive": exclusive})
