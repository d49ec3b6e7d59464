"""The doit tasks of the pipeline, and the two lines that bring them into a dodo file.

::

    from pipeline.tasks import load_pipeline
    globals().update(load_pipeline())

``load_pipeline`` reads the manifest (``doit manifest=<path>``, default
``images.toml`` in the directory doit runs in, which ``doit -d <dir>``
sets), configures logging, takes the run lock on the cache directory and
returns the dodo namespace: ``DOIT_CONFIG`` and the task creators.

Task families, one module each (context, plan and steps are shared):

====================  ==========================================  ================
task                  up to date when                             module
====================  ==========================================  ================
resolve:<image>       the lock entry matches ref and platform     resolve.py
fetch-blob:<digest>   the verified blob is unchanged              fetch.py
unpack:<digest>       the layer store is finished                 unpack.py
flatten:<image>       the flat image of the layer chain exists    flatten.py
mkfs:<image>          out/<image>.ext4 and .json match the config mkfs.py
update                never (re-resolves every image)             resolve.py
gc                    never (collects the cache)                  gc.py
====================  ==========================================  ================

fetch-blob, unpack, flatten and mkfs are created by one creator after the
resolve tasks ran (doit ``create_after``), from the lock file only: a
changed reference is resolved and built in the same run, and ``doit
list``/``info``/``clean``/``forget`` need no network. The creator is
``task_mkfs``, so ``doit mkfs:<image>`` builds one image.

Where the time goes: a fetch of a layer whose store is missing unpacks the
bytes as they arrive (``overlap``); flatten and mkfs jobs that would run
beside one another go to a small process pool (``workers``), so they use
both cores instead of one GIL; a run with nothing to do imports neither the
registry client nor any builder.

Errors while loading (bad manifest, stale lock in frozen mode, another run
on the same cache) become doit's one-line ``ERROR: ...`` and exit code 3.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path
from typing import Any

from doit import create_after, get_var
from doit.exceptions import InvalidDodoFile

from pipeline.base.log import choose_level, choose_mode, configure_logging
from pipeline.base.terminal import Terminal
from pipeline.errors import PipelineError
from pipeline.project.config import load_manifest
from pipeline.project.lockfile import read_lock
from pipeline.project.runlock import hold_directory
from pipeline.tasks.context import RunContext
from pipeline.tasks.fetch import fetch_tasks
from pipeline.tasks.flatten import flatten_tasks
from pipeline.tasks.gc import gc_task
from pipeline.tasks.mkfs import mkfs_tasks
from pipeline.tasks.plan import plan_run
from pipeline.tasks.reporter import PipelineReporter
from pipeline.tasks.resolve import check_frozen, resolve_tasks, update_task
from pipeline.tasks.toolcache import cached_tool_versions
from pipeline.tasks.unpack import DEFAULT_LIMITS, unpack_tasks

__all__ = ["load_pipeline", "make_context", "build_tasks", "doit_config", "MANIFEST_VAR",
           "FROZEN_VAR", "DEFAULT_MANIFEST", "DB_NAME"]

DEFAULT_MANIFEST = "images.toml"
MANIFEST_VAR = "ROOTFS_MANIFEST"
FROZEN_VAR = "ROOTFS_FROZEN"
DB_NAME = "doit.db"
_TRUE = ("1", "true", "yes", "on")


def _setting(var: str, env: str, environ: os._Environ[str] | dict[str, str]) -> str | None:
    """``doit <var>=...`` wins over the environment variable ``env``."""
    value = get_var(var)
    return value if value not in (None, "") else environ.get(env) or None


def make_context(manifest: str | os.PathLike[str] | None = None, *,
                 environ: dict[str, str] | None = None, frozen: bool | None = None,
                 terminal: Terminal | None = None) -> RunContext:
    """Read the manifest and build the run context; no lock, no logging setup, no network."""
    env = dict(os.environ) if environ is None else environ
    path = manifest or _setting("manifest", MANIFEST_VAR, env) or DEFAULT_MANIFEST
    if frozen is None:
        frozen = (_setting("frozen", FROZEN_VAR, env) or "").lower() in _TRUE
    loaded = load_manifest(Path(path), environ=env)
    return RunContext(manifest=loaded, terminal=terminal or Terminal(sys.stderr), frozen=frozen)


def build_tasks(ctx: RunContext) -> Any:
    """All tasks made from the lock file: fetch-blob, unpack, flatten, mkfs."""
    plan = plan_run(ctx.manifest, read_lock(ctx.lock_path))
    tools = cached_tool_versions(ctx.cache.root) if plan.images else {}
    # The same limits for the unpack overlapped with a download and the unpack task.
    yield from fetch_tasks(ctx, plan, DEFAULT_LIMITS)
    yield from unpack_tasks(ctx, plan, DEFAULT_LIMITS)
    yield from flatten_tasks(ctx, plan)
    yield from mkfs_tasks(ctx, plan, tools)


def doit_config(ctx: RunContext) -> dict[str, Any]:
    return {
        "default_tasks": ["resolve", "mkfs"],
        # Thread workers share the registry connection pool and the blob
        # cache's locks; process mode would need cloudpickle for delayed tasks.
        "par_type": "thread",
        "num_process": ctx.manifest.settings.jobs,
        "backend": "sqlite3",
        "dep_file": str(ctx.cache.root / DB_NAME),
        # We declare no file_dep; should anyone add one, never md5 a blob.
        "check_file_uptodate": "timestamp",
        "reporter": PipelineReporter,
        "minversion": "0.36.0",
    }


def load_pipeline(manifest: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """The dodo namespace for the manifest: ``DOIT_CONFIG`` and the ``task_*`` creators."""
    try:
        terminal = Terminal(sys.stderr)
        mode = choose_mode(get_var("log"), os.environ, sys.stderr)
        level = choose_level(get_var("log_level"), os.environ)
        configure_logging(mode=mode, terminal=terminal, level=level)
        ctx = make_context(manifest, terminal=terminal)
        ctx.log_mode, ctx.log_level = mode, level
        ctx.cache.root.mkdir(parents=True, exist_ok=True)
        hold_directory(ctx.cache.root)
        if ctx.frozen:
            check_frozen(ctx)
    except PipelineError as err:
        # doit prints InvalidDodoFile as one "ERROR: ..." line and exits 3; anything
        # else is a bug and keeps its traceback.
        raise InvalidDodoFile(str(err)) from None
    atexit.register(ctx.close)

    def task_resolve() -> Any:
        """Resolve image references into the lock file."""
        yield from resolve_tasks(ctx)

    @create_after(executed="resolve")  # type: ignore[untyped-decorator]  # doit is untyped
    def task_mkfs() -> Any:
        """Build every image: fetch blobs, unpack layers, flatten, mkfs.ext4."""
        try:
            yield from build_tasks(ctx)
        except PipelineError as err:
            raise InvalidDodoFile(str(err)) from None

    def task_update() -> Any:
        """Re-resolve every image (floating tags) into the lock file."""
        return update_task(ctx)

    def task_gc() -> Any:
        """Remove cache entries no image references."""
        return gc_task(ctx)

    return {"DOIT_CONFIG": doit_config(ctx), "task_resolve": task_resolve,
            "task_mkfs": task_mkfs, "task_update": task_update, "task_gc": task_gc}
