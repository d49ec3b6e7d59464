"""Shards: which images one runner of a CI fan-out builds.

The CI engine fans out (a GitHub Actions matrix, GitLab ``parallel:``, a
Kubernetes Indexed Job); every runner computes the same partition from the
lock file alone, so no runner talks to another and no scheduler exists.

The partition, for N shards:

- Images whose first layer is the same (one base chain) form a group and stay
  in one shard, so one runner fetches and unpacks that base once; a group too
  costly to fit one shard's fair share is split into its images.
- Cost is the image's layer bytes (compressed sizes in the lock): the best
  estimate of fetch, unpack and mkfs work available without a download.
- Placement is rendezvous hashing with bounded load: each group ranks the
  shards by sha256(group, shard) and takes the best-ranked shard that stays
  under the capacity. The rank of shard s for a group does not depend on N,
  so going from N to N+1 shards moves mostly the groups that now rank shard
  N+1 first, about 1/(N+1) of them, instead of reshuffling everything.

Everything here is deterministic across processes: sha256, never ``hash()``
(which ``PYTHONHASHSEED`` salts), and a total order on ties.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ShardError
from pipeline.project.lockfile import LockEntry

__all__ = ["MAX_SHARDS", "Shard", "matrix", "partition", "shard_from_env", "parse_shard"]

# A fan-out wider than this is a typo (or a runner per image of a huge
# manifest, which the CI engines themselves cap well below this).
MAX_SHARDS = 1024
# Capacity slack over the fair share (total / N): enough room for rendezvous
# placement to keep most groups on their first-ranked shard (stability when N
# changes) while no shard gets more than a quarter over its share.
CAPACITY_SLACK = 1.25
# Each image costs at least this, in bytes: an image of tiny layers still
# costs an mkfs and a record.
MIN_IMAGE_COST = 1 << 20


@dataclass(frozen=True, slots=True)
class Shard:
    """Shard ``index`` (1-based) of ``total``."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"


def _check(index: int, total: int, where: str, text: str) -> Shard:
    if not 1 <= total <= MAX_SHARDS:
        raise ShardError(f"{where}: shard count in {text!r} must be between 1 and "
                         f"{MAX_SHARDS}; give e.g. shard=1/4")
    if not 1 <= index <= total:
        raise ShardError(f"{where}: shard index in {text!r} must be between 1 and "
                         f"{total}; give e.g. shard=1/{total}")
    return Shard(index, total)


def _int(text: str, where: str, whole: str) -> int:
    # int() accepts "+3", " 3" and "3_0"; a shard is plain ASCII digits.
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise ShardError(f"{where}: {whole!r} is not of the form K/N with whole "
                         f"numbers; give e.g. shard=1/4")
    return int(text)


def parse_shard(text: str, where: str = "shard=") -> Shard:
    """``"2/5"`` -> Shard(2, 5); 1-based, as the CLI and GitLab count."""
    index, sep, total = text.partition("/")
    if not sep:
        raise ShardError(f"{where}: {text!r} is not of the form K/N; give e.g. "
                         f"shard=1/4")
    return _check(_int(index, where, text), _int(total, where, text), where, text)


def shard_from_env(env: Mapping[str, str]) -> Shard | None:
    """The shard the CI engine assigned, or None when not running sharded.

    GitLab ``parallel:`` sets CI_NODE_INDEX/CI_NODE_TOTAL (1-based); a
    Kubernetes Indexed Job sets JOB_COMPLETION_INDEX (0-based) and the count
    comes from ROOTFS_SHARDS, which the Job spec sets to its completions.
    """
    if "CI_NODE_INDEX" in env and "CI_NODE_TOTAL" in env:
        text = f"{env['CI_NODE_INDEX']}/{env['CI_NODE_TOTAL']}"
        return parse_shard(text, "CI_NODE_INDEX/CI_NODE_TOTAL")
    if "JOB_COMPLETION_INDEX" in env:
        where = "JOB_COMPLETION_INDEX/ROOTFS_SHARDS"
        raw_total = env.get("ROOTFS_SHARDS")
        if raw_total is None:
            raise ShardError(f"{where}: JOB_COMPLETION_INDEX is set but ROOTFS_SHARDS is not; "
                             f"set ROOTFS_SHARDS to the Job's completions")
        zero_based = _int(env["JOB_COMPLETION_INDEX"], where, env["JOB_COMPLETION_INDEX"])
        return _check(zero_based + 1, _int(raw_total, where, raw_total), where,
                      f"{zero_based}/{raw_total}")
    return None


def _cost(entry: LockEntry) -> int:
    return max(MIN_IMAGE_COST, sum(layer.size for layer in entry.resolved.layers))


def _group_key(entry: LockEntry) -> str:
    layers = entry.resolved.layers
    # An image without layers is its own group (keyed by its manifest).
    return str(layers[0].digest) if layers else str(entry.resolved.manifest_digest)


def _rank(key: str, shard: int) -> bytes:
    return hashlib.sha256(f"{key}\0{shard}".encode()).digest()


def partition(entries: Mapping[str, LockEntry], total: int,
              unresolved: Iterable[str] = ()) -> list[list[str]]:
    """Image names per shard (index 0 is shard 1), each list sorted.

    ``unresolved`` names images the lock does not hold yet: each is its own
    group at the minimum cost, placed by its name (the runner that gets it
    resolves it).
    """
    if not 1 <= total <= MAX_SHARDS:
        raise ShardError(f"shards={total}: must be between 1 and {MAX_SHARDS}")
    groups: dict[str, list[str]] = {}
    for name in sorted(entries):
        groups.setdefault(_group_key(entries[name]), []).append(name)
    cost = {name: _cost(entries[name]) for name in entries}
    for name in sorted(set(unresolved) - set(entries)):
        groups[f"image\0{name}"] = [name]
        cost[name] = MIN_IMAGE_COST
    grand = sum(cost.values())
    capacity = grand / total * CAPACITY_SLACK
    units: list[tuple[int, str, list[str]]] = []
    for key, names in groups.items():
        group_cost = sum(cost[n] for n in names)
        if group_cost <= capacity or len(names) == 1:
            units.append((group_cost, key, names))
        else:
            # Too big to keep together: each image places on its own.
            units.extend((cost[n], f"{key}\0{n}", [n]) for n in names)
    # Largest first places the hard cases while there is room; the key breaks
    # ties so that the order is total.
    units.sort(key=lambda u: (-u[0], u[1]))
    load = [0] * total
    shards: list[list[str]] = [[] for _ in range(total)]
    for unit_cost, key, names in units:
        order = sorted(range(total), key=lambda s: _rank(key, s), reverse=True)
        fitting = [s for s in order if load[s] + unit_cost <= capacity]
        # A unit bigger than the capacity goes to the least loaded shard.
        chosen = fitting[0] if fitting else min(order, key=lambda s: load[s])
        load[chosen] += unit_cost
        shards[chosen].extend(names)
    return [sorted(names) for names in shards]


def matrix(entries: Mapping[str, LockEntry], total: int,
           unresolved: Iterable[str] = ()) -> dict[str, list[dict[str, Any]]]:
    """The GitHub Actions matrix (``fromJSON``): one include per shard, shards in order."""
    return {"include": [{"shard": str(Shard(k + 1, total)), "images": names}
                        for k, names in enumerate(partition(entries, total, unresolved))]}
