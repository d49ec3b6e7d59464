"""The instant no-op: one stamp proves that a plain ``doit`` run has nothing to do.

A run with nothing to do used to cost about 3 ms per image: five tasks each
to create, and five up-to-date checks, config digests and database reads
each in doit. This module replaces that, for a plain ``doit`` (the default
tasks, no task names, no option that changes what runs), by one check.

After a plain run in which every task ran or was up to date and none failed
(``StampingReporter``, called after doit closed its database), the stamp
``<cache_dir>/noop.json`` records:

- ``key``: a digest of everything that decides the task graph and the
  tasks' configs: the manifest's bytes and path, the lock file's bytes, the
  cache and output directories, the remote cache and whether it is pushed
  to (the environment may set them), the e2fsprogs versions (``toolcache``), the
  identity (size, mtime) of every module of the pipeline and the versions
  of doit and Python, and the doit database's size and mtime (doit leaves
  the file alone on a no-op; any run that recorded something changes it);
- ``files``: the (size, mtime) of every file an up-to-date check looks at:
  each verified blob, each layer store's marker, each flat image's header,
  each ``out/<image>.ext4`` and its record.

The next plain run recomputes the key (reading two small files, no lock
parse) and stats the listed files. When everything matches, the full graph
would find every task up to date, since each of its checks is a function of
exactly these inputs: the tasks are not created at all and the run ends in
a fraction of a second. Anything else (a deleted or rewritten output, a
changed option, reference or platform, an edited lock, a new toolchain, a
``doit forget``, an upgrade of the pipeline) runs the full graph, which
notices the change as before and writes a new stamp when it succeeds.

The stamp is a cache: nothing in it is trusted beyond that comparison, a
file that does not parse is ignored, and a stale one costs one full run.
Whoever can write the cache directory can already make a build use what
it likes; the stamp gives no more than that.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import doit
import structlog

import pipeline
from pipeline.base.files import file_stamp, remove_path, write_atomic
from pipeline.base.jsontext import loads_bounded
from pipeline.errors import PipelineError
from pipeline.project.buildrecord import record_path_for
from pipeline.project.lockfile import read_lock
from pipeline.tasks.cmdline import only_options
from pipeline.tasks.context import RunContext
from pipeline.tasks.plan import plan_run
from pipeline.tasks.reporter import PipelineReporter

__all__ = ["STAMP_NAME", "NoopStamp", "plain_run", "state_key", "unchanged", "write_stamp",
           "stamping_reporter"]

log = structlog.get_logger("pipeline.run")

STAMP_NAME = "noop.json"
_FORMAT = 1
# A thousand images list about 5,000 files (~0.5 MB); more than this is not our stamp.
STAMP_MAX_BYTES = 64 << 20
_PACKAGE_DIR = Path(pipeline.__file__).resolve().parent

# doit `run` options that change neither which tasks run nor how they are
# checked (file, directory, parallelism, verbosity): with only these and
# `name=value` variables, a run is plain. Anything else (task names,
# --always-execute, another database, backend or reporter, --single, ...)
# makes the run take the full graph.
_VALUE_OPTIONS = frozenset({"-f", "--file", "-d", "--dir", "-n", "--process", "-P",
                            "--parallel-type", "-v", "--verbosity", "--failure-verbosity"})
_FLAG_OPTIONS = frozenset({"-c", "--continue", "-k", "--seek-file"})


def plain_run(args: Sequence[str]) -> bool:
    """True when ``args`` (doit's command line without the program) run the default tasks.

    Conservative: a command line this does not understand is not plain.
    """
    rest = list(args)
    if rest and rest[0] == "run":
        rest.pop(0)
    return only_options(rest, _VALUE_OPTIONS, _FLAG_OPTIONS)


@dataclass(frozen=True, slots=True)
class NoopStamp:
    key: str
    tasks: int
    """Tasks the full graph had (all up to date when the stamp was written)."""
    images: int
    files: tuple[tuple[str, int | None, int | None], ...]
    """(path, size, mtime_ns); size and mtime None for a file that must be absent."""


def _code_identity() -> list[tuple[str, int, int]]:
    """(module, size, mtime_ns) of every module of the pipeline: a change of code re-plans."""
    found = []
    for root, dirs, files in os.walk(_PACKAGE_DIR):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                st = os.stat(path)
                found.append((os.path.relpath(path, _PACKAGE_DIR), st.st_size, st.st_mtime_ns))
    return found


def _read_bytes(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def state_key(ctx: RunContext, tools: Mapping[str, str]) -> str:
    """The digest of everything that decides the task graph and the tasks' configs."""
    m = ctx.manifest
    h = hashlib.sha256()

    def part(label: str, value: bytes | None) -> None:
        data = b"\xff" if value is None else b"\x00" + value
        h.update(label.encode() + len(data).to_bytes(8, "big") + data)

    part("format", str(_FORMAT).encode())
    part("manifest-path", os.fsencode(m.path))
    part("manifest", _read_bytes(m.path))
    part("lock", _read_bytes(ctx.lock_path))
    part("dirs", os.fsencode(f"{ctx.cache.root}\0{ctx.output_dir}"))
    # A no-op of shard 1/2 says nothing about shard 2/2.
    part("shard", None if ctx.shard is None else str(ctx.shard).encode())
    # The remote cache may come from the environment (ROOTFS_REMOTE_CACHE*): it decides
    # which tasks exist and whether built images still need pushing.
    remote = m.remote
    part("remote", None if remote is None else f"{remote}\0{remote.push}".encode())
    part("tools", json.dumps(dict(tools), sort_keys=True).encode())
    part("code", json.dumps(_code_identity()).encode())
    part("runtime", f"{doit.__version__}\0{sys.version}".encode())
    part("doit-db", json.dumps(file_stamp(ctx.cache.root / _db_name())).encode())
    return h.hexdigest()


def _db_name() -> str:
    from pipeline.tasks import DB_NAME  # the package's own constant; imported at use

    return DB_NAME


def _stamp_path(ctx: RunContext) -> Path:
    return ctx.cache.root / STAMP_NAME


def _watched(ctx: RunContext) -> list[Path]:
    """Every file an up-to-date check of the full graph looks at, for the current plan."""
    plan = plan_run(ctx.manifest, read_lock(ctx.lock_path), only=ctx.selected)
    from pipeline.flat.image import HEADER_NAME
    from pipeline.layers.store import MARKER_NAME, LayerStore

    paths: dict[Path, None] = {}
    for layer in plan.layers:
        digest = layer.layer.digest
        paths[ctx.cache.blobs.path(digest)] = None
        paths[LayerStore.path_for(ctx.cache.layers_root, digest) / MARKER_NAME] = None
    from pipeline.oci.localref import LocalRef

    for spec in ctx.images:
        if isinstance(spec.ref, LocalRef):
            # A local source is re-probed by the full graph: watch what a rewrite of
            # it changes (the archive file, or the layout's index.json).
            where = spec.ref.location(ctx.manifest.path.parent)
            paths[where if spec.ref.is_archive else where / "index.json"] = None
    for image in plan.images:
        paths[ctx.cache.flat_root / image.chain_key / HEADER_NAME] = None
        output = ctx.output_dir / f"{image.name}.ext4"
        paths[output] = None
        paths[record_path_for(output)] = None
    return list(paths)


def _stat(path: str) -> tuple[int | None, int | None]:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return (None, None)
    return (st.st_size, st.st_mtime_ns)


def _load(path: Path) -> NoopStamp | None:
    try:
        with open(path, "rb") as f:
            raw = f.read(STAMP_MAX_BYTES + 1)
        data = loads_bounded(raw) if len(raw) <= STAMP_MAX_BYTES else None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            return None
        files = tuple((str(p), s, t) for p, s, t in data["files"])
        return NoopStamp(key=str(data["key"]), tasks=int(data["tasks"]),
                         images=int(data["images"]), files=files)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def unchanged(ctx: RunContext, tools_of: Any) -> NoopStamp | None:
    """The stamp when nothing changed since it was written, else None (and no stamp).

    ``tools_of(cache_root)`` gives the e2fsprogs versions (``cached_tool_versions``).
    """
    path = _stamp_path(ctx)
    stamp = _load(path)
    if stamp is None:
        return None
    if stamp.key == state_key(ctx, tools_of(ctx.cache.root)) and all(
            _stat(p) == (size, mtime) for p, size, mtime in stamp.files):
        return stamp
    # Stale: the full graph runs, and writes a new stamp only if it all succeeds.
    remove_path(path)
    return None


def write_stamp(ctx: RunContext, tasks: int, tools_of: Any) -> None:
    """Record the current state as one in which the full graph has nothing to do."""
    started = time.monotonic()
    try:
        files = []
        for p in _watched(ctx):
            stamp = file_stamp(p)
            files.append([str(p), *(stamp if stamp is not None else (None, None))])
        data = {"format": _FORMAT, "key": state_key(ctx, tools_of(ctx.cache.root)),
                "tasks": tasks, "images": len(ctx.images), "files": files}
        write_atomic(_stamp_path(ctx), json.dumps(data, separators=(",", ":")).encode())
    except (OSError, PipelineError) as err:
        # Only a cache (a lock or a tool that went bad after the run is reported by
        # the next one): the next run takes the full graph.
        log.debug("noop.not_stamped", error=str(err))
        return
    log.debug("noop.stamped", files=len(files), seconds=round(time.monotonic() - started, 3))


def stamping_reporter(ctx: RunContext, tools_of: Any, *,
                      skipped: NoopStamp | None,
                      base: type[PipelineReporter] = PipelineReporter) -> type[PipelineReporter]:
    """``base`` that, for a plain run, counts the stamp's tasks as up to date when the graph
    was skipped, and otherwise writes the stamp once a run ended with no failure."""

    class StampingReporter(base):  # type: ignore[valid-type,misc]
        def complete_run(self) -> None:
            if skipped is not None:
                self.up_to_date += skipped.tasks
                # The summary lists every image as the full graph would have: up to date.
                outcomes = getattr(self, "_outcome", None)
                if isinstance(outcomes, dict):
                    for spec in ctx.images:
                        outcomes.setdefault(spec.name, "up to date")
            super().complete_run()
            clean = (getattr(self, "failed", None) == 0 and getattr(self, "blocked", None) == 0
                     and not getattr(self, "runtime_errors", True))
            if skipped is None and clean:
                # doit closed its database before calling us: its stamp is final.
                write_stamp(ctx, self.ran + self.up_to_date, tools_of)

    return StampingReporter
