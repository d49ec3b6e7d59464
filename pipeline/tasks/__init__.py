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
                      (a local source: and still holds that image)
fetch-blob:<digest>   the verified blob is unchanged              fetch.py
                      (copied from a local source, else fetched)
unpack:<digest>       the layer store is finished                 unpack.py
flatten:<image>       the flat image of the layer chain exists    flatten.py
remote:<image>        the output is built (else: one HEAD, a hit    remote.py
                      is fetched)
mkfs:<image>          out/<image>.ext4 and .json match the config mkfs.py
                      (and were pushed/published as asked)        share.py
collect               never (checks the remote cache)             collect.py
update                never (re-resolves every image)             resolve.py
gc                    never (collects the cache)                  gc.py
prune:<image>         never (made only for a removed image)       prune.py
====================  ==========================================  ================

fetch-blob, unpack, flatten and mkfs are created by one creator after the
resolve tasks ran (doit ``create_after``), from the lock file only: a
changed reference is resolved and built in the same run, and ``doit
list``/``info``/``clean``/``forget`` need no network. The creator is
``task_mkfs``, so ``doit mkfs:<image>`` builds one image, and
``mkfs:<image>`` is a name another dodo file's ``task_dep`` may use
(``delayed``).

Where the time goes: a fetch of a layer whose store is missing unpacks the
bytes as they arrive (``overlap``); flatten and mkfs jobs that would run
beside one another go to a small process pool (``workers``), so they use
both cores instead of one GIL; a run with nothing to do imports neither the
registry client nor any builder.

A plain ``doit`` (the default tasks, no task names) first asks ``noop``
whether its stamp still matches: when the manifest, the lock, the tools,
the code, doit's database and every watched file are as a run without
failures left them, no per-image task is created at all and the run ends
at once (``run.unchanged``); otherwise the graph is built as above and the
stamp is written again when the run succeeds.

Errors while loading (bad manifest, stale lock in frozen mode, another run
on the same cache) become doit's one-line ``ERROR: ...`` and exit code 3.
"""

from __future__ import annotations

import atexit
import itertools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from doit import doit_cmd, get_var
from doit.exceptions import InvalidDodoFile

from pipeline.base.log import choose_level, choose_mode, configure_logging
from pipeline.base.terminal import Terminal
from pipeline.errors import PipelineError
from pipeline.project.config import load_manifest
from pipeline.project.config.directories import check_fixed_sizes, prepare_directory
from pipeline.project.lockfile import read_lock
from pipeline.project.runlock import hold_directory
from pipeline.project.sharing import register_manifest
from pipeline.tasks.cmdline import check_requested, check_vars, install_interrupt_hook, parse_switch
from pipeline.tasks.collect import collect_task
from pipeline.tasks.context import RunContext
from pipeline.tasks.delayed import create_after_named
from pipeline.tasks.fetch import fetch_tasks
from pipeline.tasks.flatten import flatten_tasks
from pipeline.tasks.gc import gc_task
from pipeline.tasks.interpreter import tune_for_run
from pipeline.tasks.listing import families_only
from pipeline.tasks.mkfs import mkfs_tasks
from pipeline.tasks.noop import NoopStamp, plain_run, stamping_reporter, unchanged
from pipeline.tasks.plan import RunPlan, current_entry, plan_run
from pipeline.tasks.prune import prune_tasks
from pipeline.tasks.remote import lazy_layer_tasks, remote_tasks
from pipeline.tasks.reporter import reporter_for
from pipeline.tasks.resolve import check_frozen, resolve_tasks, update_task
from pipeline.tasks.selection import check_plan_request, choose_shard, plan_task, shard_images
from pipeline.tasks.share import sharing_tasks
from pipeline.tasks.toolcache import versions_used
from pipeline.tasks.unpack import DEFAULT_LIMITS, unpack_tasks

__all__ = ["load_pipeline", "make_context", "build_tasks", "doit_config", "MANIFEST_VAR",
           "FROZEN_VAR", "DEFAULT_MANIFEST", "DB_NAME"]

DEFAULT_MANIFEST = "images.toml"
MANIFEST_VAR = "ROOTFS_MANIFEST"
FROZEN_VAR = "ROOTFS_FROZEN"
DB_NAME = "doit.db"

log = structlog.get_logger("pipeline.run")


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
        explicit = get_var("frozen")
        frozen = parse_switch("frozen", explicit) if explicit not in (None, "") else (
            parse_switch(FROZEN_VAR, env.get(FROZEN_VAR)))
    loaded = load_manifest(Path(path), environ=env)
    return RunContext(manifest=loaded, terminal=terminal or Terminal(sys.stderr), frozen=frozen)


def build_tasks(ctx: RunContext, plan: RunPlan | None = None) -> Any:
    """All tasks made from the lock file (or ``plan``): fetch-blob, unpack, flatten, mkfs."""
    if plan is None:
        plan = plan_run(ctx.manifest, read_lock(ctx.lock_path), only=ctx.selected)
    tools = versions_used(ctx.cache.root, {image.spec.ext4.builder for image in plan.images})
    # With a remote cache, each image is looked up first; a hit needs no layer task.
    yield from remote_tasks(ctx, plan, tools)
    # The same limits for the unpack overlapped with a download and the unpack task.
    yield from lazy_layer_tasks(ctx, plan, tools, itertools.chain(
        fetch_tasks(ctx, plan, DEFAULT_LIMITS), unpack_tasks(ctx, plan, DEFAULT_LIMITS),
        flatten_tasks(ctx, plan)))
    yield from sharing_tasks(ctx, plan, tools, mkfs_tasks(ctx, plan, tools))


def _tools_of(ctx: RunContext) -> Callable[[Path], dict[str, str]]:
    """The e2fsprogs versions the manifest's images depend on, for the no-op stamp."""
    builders = {spec.ext4.builder for spec in ctx.manifest.images}
    return lambda cache_dir: versions_used(cache_dir, builders)


def doit_config(ctx: RunContext) -> dict[str, Any]:
    return {
        "default_tasks": ["prune", "resolve", "mkfs"],
        # Thread workers share the registry connection pool and the blob
        # cache's locks; process mode would need cloudpickle for delayed tasks.
        "par_type": "thread",
        "num_process": ctx.manifest.settings.jobs,
        "backend": "sqlite3",
        "dep_file": str(ctx.cache.root / DB_NAME),
        # We declare no file_dep; should anyone add one, never md5 a blob.
        "check_file_uptodate": "timestamp",
        "reporter": reporter_for(ctx),
        "minversion": "0.36.0",
    }


def _command_line_vars() -> dict[str, str] | None:
    """doit's ``name=value`` arguments, None when doit did not parse a command line."""
    # doit keeps them in a module global that get_var reads; there is no
    # public way to list them, and a typo must not pass silently.
    found = getattr(doit_cmd, "_CMDLINE_VARS", None)
    return dict(found) if isinstance(found, dict) else None


# A plain run whose stamp matches creates only the (empty) family groups.
_NOTHING = RunPlan(images=(), layers=(), unresolved=())


def load_pipeline(manifest: str | os.PathLike[str] | None = None, *,
                  argv: list[str] | None = None) -> dict[str, Any]:
    """The dodo namespace for the manifest: ``DOIT_CONFIG`` and the ``task_*`` creators.

    ``argv`` is doit's command line (default ``sys.argv[1:]``): a plain run
    (default tasks, no task names) may skip the whole graph (``noop``).
    """
    skipped: NoopStamp | None = None
    plain = graphless = False
    install_interrupt_hook()
    try:
        check_vars(_command_line_vars() or {})
        terminal = Terminal(sys.stderr)
        mode = choose_mode(get_var("log"), os.environ, sys.stderr)
        level = choose_level(get_var("log_level"), os.environ)
        configure_logging(mode=mode, terminal=terminal, level=level)
        ctx = make_context(manifest, terminal=terminal)
        fetch = parse_switch("fetch", get_var("fetch"))
        ctx.log_mode, ctx.log_level = mode, level
        # A lock file that does not parse stops the run here, before any step.
        entries = read_lock(ctx.lock_path)
        shards = check_plan_request(sys.argv if argv is None else ["", *argv], get_var("shards"))
        ctx.shard = choose_shard(get_var("shard"), os.environ)
        if ctx.shard is not None:
            ctx.selected = shard_images(ctx.manifest, entries, ctx.shard)
            log.info("run.shard", shard=str(ctx.shard), images=len(ctx.selected),
                     of=len(ctx.manifest.images))
        if _command_line_vars() is not None:  # run by doit: its argv names the tasks
            check_requested(sys.argv, [spec.name for spec in ctx.manifest.images],
                            [spec.name for spec in ctx.manifest.images
                             if current_entry(spec, entries) is not None],
                            shard=ctx.shard, selected=ctx.selected)
        prepare_directory(ctx.cache.root, "cache_dir", ctx.manifest.path)
        prepare_directory(ctx.output_dir, "output_dir", ctx.manifest.path)
        check_fixed_sizes(ctx.output_dir, ctx.manifest.images, ctx.manifest.path)
        hold_directory(ctx.cache.root)
        if ctx.frozen:
            check_frozen(ctx)
        # gc run from any manifest sharing this cache keeps what this one uses.
        register_manifest(ctx.cache.root, ctx.manifest.path)
        args = sys.argv[1:] if argv is None else argv
        plain = plain_run(args)
        # `doit list` of the families needs no per-image task (tasks.listing).
        graphless = families_only(args)
        if plain:
            started = time.monotonic()
            skipped = unchanged(ctx, _tools_of(ctx))
            if skipped is not None:
                log.info("run.unchanged", images=skipped.images, tasks=skipped.tasks,
                         seconds=round(time.monotonic() - started, 3))
    except PipelineError as err:
        # doit prints InvalidDodoFile as one "ERROR: ..." line and exits 3; anything
        # else is a bug and keeps its traceback.
        raise InvalidDodoFile(str(err)) from None
    atexit.register(ctx.close)

    def task_resolve() -> Any:
        """Resolve image references into the lock file."""
        tasks = resolve_tasks(ctx)
        # Nothing changed: the family's group task alone (the default tasks name it).
        yield from itertools.islice(tasks, 1) if skipped is not None or graphless else tasks

    # mkfs:<image> exists for any task_dep before the creator runs (tasks.delayed).
    @create_after_named("resolve", "mkfs", (image.name for image in ctx.images))
    def task_mkfs() -> Any:
        """Build every image: fetch blobs, unpack layers, flatten, mkfs.ext4."""
        try:
            yield from build_tasks(ctx, _NOTHING if skipped is not None or graphless
                                   else None)
        except PipelineError as err:
            raise InvalidDodoFile(str(err)) from None

    def task_prune() -> Any:
        """Drop the lock entries and outputs of images removed from the manifest."""
        yield from prune_tasks(ctx)

    def task_update() -> Any:
        """Re-resolve every image (floating tags) into the lock file."""
        return update_task(ctx)

    def task_gc() -> Any:
        """Remove cache entries no image references."""
        return gc_task(ctx)

    def task_plan() -> Any:
        """Print the shards of a CI fan-out as a GitHub Actions matrix (shards=N)."""
        return plan_task(ctx, shards)

    def task_collect() -> Any:
        """Check every image is in the remote cache; write out/index.json (fetch=1: download)."""
        return collect_task(ctx, fetch)

    config = doit_config(ctx)
    if plain:
        config["reporter"] = stamping_reporter(ctx, _tools_of(ctx), skipped=skipped,
                                               base=config["reporter"])
    if _command_line_vars() is not None:   # the doit process itself, not a test session
        tune_for_run()
    return {"DOIT_CONFIG": config, "task_resolve": task_resolve,
            "task_mkfs": task_mkfs, "task_update": task_update, "task_gc": task_gc,
            "task_prune": task_prune, "task_plan": task_plan, "task_collect": task_collect}
