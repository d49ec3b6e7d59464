"""Which images of the manifest one run builds: all of them, or one shard of a CI fan-out.

``doit shard=K/N`` (or the CI engine's own index variables, see
``project.shards.shard_from_env``) narrows a run to the images of shard K:
the partition is computed from the manifest and the lock file as they are
when the run starts, so every runner of a fan-out, started from the same
commit, computes the same one. The lock and the manifest stay whole: a
shard resolves, builds and reports its own images only, and writes its
resolutions into the lock beside the others' entries.

``doit plan shards=N`` prints that partition for all N shards as a GitHub
Actions matrix, from the same inputs.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from pipeline.errors import ShardError
from pipeline.project.config import Manifest
from pipeline.project.lockfile import LockEntry, read_lock
from pipeline.project.shards import (
    MAX_SHARDS,
    Shard,
    matrix,
    parse_shard,
    partition,
    shard_from_env,
)
from pipeline.tasks.cmdline import requested_images
from pipeline.tasks.context import RunContext
from pipeline.tasks.steps import IO, action

__all__ = ["choose_shard", "shard_images", "plan_document", "parse_total", "plan_step",
           "plan_task", "check_plan_request"]


_NO_TOTAL = "doit plan: give the number of shards, e.g. doit plan shards=4"


def choose_shard(given: str | None, environ: Mapping[str, str]) -> Shard | None:
    """``shard=K/N`` from the command line wins over the CI engine's variables."""
    if given not in (None, ""):
        assert given is not None
        return parse_shard(given)
    return shard_from_env(environ)


def _domain(manifest: Manifest,
            entries: Mapping[str, LockEntry]) -> tuple[dict[str, LockEntry], list[str]]:
    # Only the manifest's images: a lock entry of a removed image is not built.
    declared = [spec.name for spec in manifest.images]
    return ({n: entries[n] for n in declared if n in entries},
            [n for n in declared if n not in entries])


def shard_images(manifest: Manifest, entries: Mapping[str, LockEntry],
                 shard: Shard) -> frozenset[str]:
    """The names of the images in ``shard``."""
    known, unresolved = _domain(manifest, entries)
    return frozenset(partition(known, shard.total, unresolved)[shard.index - 1])


def parse_total(text: str) -> int:
    """``shards=N`` of ``doit plan``."""
    if not (text.isascii() and text.isdigit() and len(text) <= 6
            and 1 <= int(text) <= MAX_SHARDS):
        raise ShardError(f"shards={text!r}: the number of shards must be a whole number "
                         f"from 1 to {MAX_SHARDS}; give e.g. doit plan shards=4")
    return int(text)


def plan_document(manifest: Manifest, entries: Mapping[str, LockEntry],
                  total: int) -> dict[str, list[dict[str, Any]]]:
    """``{"include": [{"shard": "1/N", "images": [...]}, ...]}`` for N shards."""
    known, unresolved = _domain(manifest, entries)
    return matrix(known, total, unresolved)


def check_plan_request(argv: Sequence[str], shards: str | None) -> int | None:
    """The shard count of a ``doit plan`` on this command line, checked before anything runs.

    ``shards=`` without ``plan`` (or ``plan`` without it) is refused: a typo
    must not end in a run that builds everything, or in a plan of nothing.
    """
    command, _ = requested_images(argv)
    # `doit list plan`, `doit info plan`, `doit help plan` look at the task, not run it.
    planning = "plan" in argv[1:] and command in (None, "run")
    if shards in (None, ""):
        if planning:
            raise ShardError(_NO_TOTAL)
        return None
    assert shards is not None
    if not planning:
        raise ShardError(f"shards={shards}: only `doit plan` reads it (doit plan "
                         f"shards={shards}); a runner builds its shard with shard=K/N")
    return parse_total(shards)


def plan_step(ctx: RunContext, total: int | None) -> None:
    """Print the matrix for ``total`` shards on stdout: one line of JSON, nothing else."""
    if total is None:
        raise ShardError(_NO_TOTAL)
    document = plan_document(ctx.manifest, read_lock(ctx.lock_path), total)
    # One line: GitHub's `echo "matrix=$(doit plan shards=N)" >> $GITHUB_OUTPUT` takes it whole.
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def plan_task(ctx: RunContext, total: int | None) -> dict[str, Any]:
    return {
        "doc": "print the shards of a CI fan-out as a GitHub Actions matrix (doit plan "
               "shards=N), computed from the manifest and the lock file alone",
        "actions": [action(plan_step, ctx, total, name="plan", images=[])],
        "uptodate": [False],
        "io": IO,
        "meta": {"images": []},
    }
