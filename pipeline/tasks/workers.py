"""A small process pool for the steps that hold the GIL: flatten and the ext4 build.

doit runs the pipeline's steps in threads of one process (they share the
registry connections, the per-chain locks and the progress line). Flattening
an image and the Python half of an ext4 build are pure-Python work, so in
threads they take turns on one core. A ``WorkerPool`` runs them in worker
processes instead; the step's thread submits a job and waits for it without
holding the GIL, so two steps use two cores.

- One pool per run, started on first use (the doit layer sends a job here
  only when another one is already running in the run's own process, so a
  run that builds one image never starts one); ``size`` workers, the doit
  layer uses ``pool_size(jobs)``.
- The ``forkserver`` start method with this module preloaded in the server:
  a worker starts in milliseconds with the job code already imported, and
  never inherits the parent's threads, locks or open files (forking a
  threaded process is unsafe). Workers die with the run, however it ends
  (a SIGKILL included): each one watches the run's process (a pidfd) and
  kills itself when it goes, so no orphan keeps writing into a cache whose
  run lock was released; the server then exits too.
- Jobs take and return plain picklable values (paths as strings, digests,
  options, results); locks and clients stay in the parent.
- A PipelineError raised in a worker is raised again in the parent with its
  class, message and attributes (``PipelineError.__reduce__``); any other
  exception keeps the worker's traceback as its cause. A worker
  that dies (killed, out of memory) fails its step with one line.
- Workers log through structlog configured like the parent (same format and
  level, to stderr), with the step's bound fields (task, image, digest).
"""

from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

import structlog

from pipeline.errors import PipelineError

__all__ = ["WorkerPool", "pool_size"]

T = TypeVar("T")

# Without pidfds, how often a worker checks that the run is still there.
_POLL_S = 0.2


def pool_size(jobs: int) -> int:
    """Workers for ``jobs`` parallel steps: no more than there are cores to run them."""
    return max(1, min(jobs, os.cpu_count() or 1))


# In the worker ------------------------------------------------------------------


def _init_worker(parent: int, log_mode: str, log_level: str) -> None:
    _die_with(parent)
    from pipeline.base.log import configure_logging
    from pipeline.base.terminal import Terminal

    configure_logging(mode=log_mode, terminal=Terminal(sys.stderr), level=log_level)


def _die_with(parent: int) -> None:
    """Kill this worker the moment process ``parent`` (the run) exits, however it exits.

    Nothing else would: a pool's workers (and the fork server, which lives
    as long as any of them) hold their own pipes open, so they never see
    the run go; a running job would finish into a cache whose run lock the
    kernel already released.
    """
    try:
        handle: int | None = os.pidfd_open(parent)
    except ProcessLookupError:
        os.kill(os.getpid(), signal.SIGKILL)
        return
    except (AttributeError, OSError):  # no pidfd (Linux < 5.3): poll instead
        handle = None

    def watch() -> None:
        if handle is not None:
            select.select([handle], [], [])  # readable once the process has exited
        else:
            while _running(parent):
                time.sleep(_POLL_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-run", daemon=True).start()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it is there, under another user
        pass
    return True


def _call(func: Callable[..., T], args: Sequence[Any], bindings: Mapping[str, Any]) -> T:
    with structlog.contextvars.bound_contextvars(**bindings):
        return func(*args)


# In the parent ------------------------------------------------------------------


class WorkerPool:
    """Runs jobs in worker processes; started on first use, shared by every step's thread."""

    def __init__(self, size: int, *, log_mode: str = "json", log_level: str = "info",
                 preload: Sequence[str] = ()) -> None:
        self.size = size
        self.preload = [__name__, *preload]
        self.log_mode = log_mode
        self.log_level = log_level
        self._lock = threading.Lock()
        self._executor: ProcessPoolExecutor | None = None
        self._closed = False

    def _start(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise RuntimeError("internal error: a job was given to a closed worker pool")
            if self._executor is None:
                context = multiprocessing.get_context("forkserver")
                # The server imports the job code once; every worker forks from it.
                context.set_forkserver_preload(self.preload)
                self._executor = ProcessPoolExecutor(
                    max_workers=self.size, mp_context=context, initializer=_init_worker,
                    initargs=(os.getpid(), self.log_mode, self.log_level))
            return self._executor

    def run(self, func: Callable[..., T], *args: Any) -> T:
        """``func(*args)`` in a worker; waits (without the GIL) and returns or raises."""
        executor = self._start()
        bindings = structlog.contextvars.get_contextvars()
        try:
            result = executor.submit(_call, func, args, bindings).result()
        except BrokenProcessPool:
            with self._lock:
                if self._executor is executor:
                    self._executor = None  # the next step starts a fresh pool
            executor.shutdown(wait=False, cancel_futures=True)
            raise PipelineError("a worker process died while running this step (killed, or"
                                " out of memory?); run doit again") from None
        return result

    def close(self) -> None:
        with self._lock:
            self._closed = True
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
