"""What every task of one run shares: manifest, cache layout, registry sources, workers.

A ``RunContext`` is built once per doit process (when the dodo file loads)
and handed to every action. Building one touches neither the network nor
the cache: the registry clients (``registry.sources``) and the worker pool
(``workers``) start when a step first needs them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from pipeline.base.terminal import Terminal, TransferProgress
from pipeline.project.cache import CacheLayout
from pipeline.project.config import ImageSpec, Manifest
from pipeline.project.shards import Shard
from pipeline.registry.sources import RegistrySources

if TYPE_CHECKING:  # imported on first use: a no-op run never loads multiprocessing
    from pipeline.tasks.workers import WorkerPool

log = structlog.get_logger("pipeline.run")


def _report_download(done: int, total: int) -> None:
    """Off a terminal, a long download says how far it got (the step's binding names it)."""
    log.info("fetch.progress", bytes=done, total=total,
             percent=round(100 * done / total, 1) if total else None)

__all__ = ["RunContext", "CacheGuard"]

T = TypeVar("T")


class CacheGuard:
    """Many build steps at once, or one garbage collection alone (a readers-writer lock)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._writer:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._readers:
                self._cond.wait()
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(slots=True, eq=False)
class RunContext:
    manifest: Manifest
    terminal: Terminal
    frozen: bool = False
    shard: Shard | None = None
    """The shard of a CI fan-out this run builds (``tasks.selection``); None: all images."""
    selected: frozenset[str] | None = None
    """The names of the shard's images; None: every image of the manifest."""
    registries: RegistrySources = field(init=False)
    progress: TransferProgress = field(init=False)
    cache: CacheLayout = field(init=False)
    guard: CacheGuard = field(default_factory=CacheGuard)
    log_mode: str = "json"
    log_level: str = "info"
    """The log format of this run, for worker processes to log like the parent."""
    damaged_entries: set[str] = field(default_factory=set)
    """Remote cache keys whose entry was found damaged in this run: pushed as a repair."""
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _chain_locks: dict[str, threading.Lock] = field(default_factory=dict)
    _workers: WorkerPool | None = None
    _jobs_here: int = 0

    def __post_init__(self) -> None:
        self.progress = TransferProgress(self.terminal, report=_report_download)
        self.cache = CacheLayout(self.manifest.settings.cache_dir)
        self.registries = RegistrySources(
            mirrors={host: settings.mirrors for host, settings
                     in self.manifest.registries.items() if settings.mirrors},
            insecure_hosts=self.manifest.insecure_hosts,
            mirrors_only=self.manifest.mirrors_only_hosts)

    @property
    def images(self) -> tuple[ImageSpec, ...]:
        """The images this run resolves, builds and reports: the manifest's, or the shard's."""
        if self.selected is None:
            return self.manifest.images
        return tuple(spec for spec in self.manifest.images if spec.name in self.selected)

    @property
    def output_dir(self) -> Path:
        return self.manifest.settings.output_dir

    @property
    def lock_path(self) -> Path:
        return self.manifest.lock_path

    def chain_lock(self, key: str) -> threading.Lock:
        """One flatten per chain at a time: two images may share the same layers."""
        with self._lock:
            return self._chain_locks.setdefault(key, threading.Lock())

    # Worker processes ---------------------------------------------------------

    def run_job(self, job: Callable[..., T], *args: Any) -> T:
        """``job(*args)`` (a ``workers`` job), where it gets a core of its own.

        The first job runs right here: alone, it has nothing to take turns
        with, and a run that builds one image never starts a pool (a fifth of
        a second and ~60 MB). A job that arrives while another runs here goes
        to a worker process, so the two use both cores instead of one GIL.
        """
        from pipeline.tasks.jobs import PRELOAD
        from pipeline.tasks.workers import WorkerPool, pool_size

        size = pool_size(self.manifest.settings.jobs)
        with self._lock:
            here = size < 2 or not self._jobs_here
            if here:
                self._jobs_here += 1
            elif self._workers is None:
                # doit's console script is __main__, and multiprocessing runs __main__
                # again in every worker: with doit imported in the server, that is free.
                self._workers = WorkerPool(size, log_mode=self.log_mode,
                                           log_level=self.log_level, preload=[*PRELOAD, "doit"])
            workers = self._workers
        if not here:
            assert workers is not None
            return workers.run(job, *args)
        try:
            return job(*args)
        finally:
            with self._lock:
                self._jobs_here -= 1

    def close(self) -> None:
        self.registries.close()
        with self._lock:
            workers, self._workers = self._workers, None
        if workers is not None:
            workers.close()
