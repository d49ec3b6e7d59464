"""Profile our side of one scenario with py-spy and say where the time goes.

``py-spy record --idle --subprocesses --format speedscope`` samples every
thread of doit (and any Python child) 200 times a second, including threads
that wait (on a subprocess such as mkfs.ext4, on a lock, on the network):
with ``--idle`` a wait shows up where it happens instead of vanishing, and
waits are most of what a pipeline of external tools does. The summary
aggregates all threads: for each function, the share of samples in which it
is on the stack (inclusive) and at the top (self). Open the .speedscope.json
file at https://www.speedscope.app for the flame chart.

py-spy comes from the ``bench`` extra (``pip install -e .[bench]``).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

from .ours import Ours, write_manifest
from .world import World

__all__ = ["profile_ours", "summarise", "PROFILE_SCENARIOS"]

PROFILE_SCENARIOS = ("1", "2", "5", "remote")
_TOP = 25


def _idle(stack: list[int], frames: list[dict[str, object]]) -> bool:
    """A doit thread waiting for work (worker or dispatcher on the task queue)."""
    return any(frames[i]["name"] == "Queue.get" for i in stack)


def summarise(speedscope: Path, *, top: int = _TOP) -> str:
    """Where the busy thread-seconds go: top functions by inclusive and by self time.

    Samples of doit threads idling on the task queue are counted apart: they
    are the pipeline waiting for a dependency, not doing work.
    """
    doc = json.loads(speedscope.read_text())
    frames = doc["shared"]["frames"]
    inclusive: Counter[int] = Counter()
    own: Counter[int] = Counter()
    busy = idle = wall = 0.0
    for prof in doc["profiles"]:
        wall = max(wall, float(prof["endValue"]) - float(prof["startValue"]))
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            if _idle(stack, frames):
                idle += weight
                continue
            busy += weight
            for index in set(stack):
                inclusive[index] += weight
            if stack:
                own[stack[-1]] += weight

    def name(i: int) -> str:
        f = frames[i]
        where = Path(str(f.get("file") or "?")).name
        return f"{f['name']} ({where}:{f.get('line', '?')})"

    lines = [f"{speedscope.name}: {wall:.1f} s wall, {len(doc['profiles'])} threads, "
             f"{busy:.1f} busy thread-seconds (waits on tools and I/O included), "
             f"{idle:.1f} idle on doit's task queue", "",
             "  incl s  incl %   self s  function"]
    for index, weight in inclusive.most_common(top):
        lines.append(f"{weight:8.2f} {weight / busy:7.1%} {own[index]:8.2f}  {name(index)}")
    lines += ["", "self-time leaders (s):"]
    for index, weight in own.most_common(top // 2):
        lines.append(f"{weight:8.2f}  {name(index)}")
    return "\n".join(lines)


def profile_ours(world: World, scenario: str, work: Path, out_dir: Path) -> Path:
    """Profile a cold run of ``scenario`` (1, 2 or 5), or (``remote``) a fresh directory
    getting the batch from a remote cache a first, unprofiled run filled; return the
    summary file."""
    images = {"1": [world.image("app00")], "2": world.batch, "5": [world.image("big")],
              "remote": world.batch}
    if scenario not in images:
        raise ValueError(f"--profile takes one of {', '.join(PROFILE_SCENARIOS)}, "
                         f"got {scenario!r}")
    if shutil.which("py-spy", path=str(Ours(world, out_dir).doit.parent)) is None:
        raise RuntimeError("py-spy is missing from the venv: pip install -e '.[bench]'")
    d = work / f"profile-s{scenario}"
    shutil.rmtree(d, ignore_errors=True)
    ours, env = Ours(world, out_dir), None
    if scenario == "remote":
        assert world.registry is not None, "internal error: the world's registry is not running"
        env = {"ROOTFS_REMOTE_CACHE": f"{world.registry.host}/bench/rootfs-cache-profile-"
                                      f"{os.getpid()}", "ROOTFS_REMOTE_CACHE_PUSH": "1"}
        write_manifest(d / "push", world, images[scenario])
        ours.build(d / "push", env=env)
        write_manifest(d / "fetch", world, images[scenario])
        shutil.copy(d / "push/images.lock.json", d / "fetch/images.lock.json")
        os.sync()
        d = d / "fetch"
    else:
        write_manifest(d, world, images[scenario])
    speedscope = out_dir / f"profile-s{scenario}.speedscope.json"
    ours.build(d, profile=speedscope, env=env)
    summary = out_dir / f"profile-s{scenario}.txt"
    summary.write_text(summarise(speedscope) + "\n")
    shutil.rmtree(work / f"profile-s{scenario}", ignore_errors=True)
    return summary
