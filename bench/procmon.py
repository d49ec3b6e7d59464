"""Run a command and measure its wall time and the peak memory of its whole process tree.

Peak memory is sampled, not accounted: a thread walks the tree from the
child's pid through ``/proc/<pid>/task/<tid>/children`` every SAMPLE_S and
sums, over every live process, ``Rss`` and ``Pss`` from
``/proc/<pid>/smaps_rollup``. The peak of those sums is reported:

- ``peak_rss``: the sum of resident sets, an upper bound (shared pages,
  such as the Python interpreter's libraries, count once per process);
- ``peak_pss``: proportional set size, shared pages split between the
  processes mapping them: the tree's real footprint.

Not used: ``ru_maxrss`` of children. It gives only the largest single
process, and on Linux a child's high-water mark survives ``execve``, so a
small tool started from this Python process reports the bench's own size.

A child that shares its parent's address space is counted once. Python's
``subprocess`` starts every tool with ``vfork``: until the child calls
``execve`` it runs in its parent's memory, and ``smaps_rollup`` of the child
then reports the parent's whole footprint, Pss included (the pages are
mapped once, by one mm). Sampled at that moment, a 200 MiB process starting
``true`` read as 400 MiB; the pipeline starts mkfs.ext4 and debugfs from a
process of 100 MiB thousands of times in a large build, so its peaks were
one phantom copy of the doit process high. ``kcmp(KCMP_VM)`` tells whether
two processes share an mm; where the kernel refuses it, both are counted.

Page cache is not process memory and is not counted (cgroup v2's
memory.peak would count it, and this host offers only cgroup v1 anyway).
A process that lives less than one sample period can be missed; the
commands measured here run for seconds.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Measurement", "measure", "tree_memory", "SAMPLE_S"]

# 20 ms: a few hundred samples for a one-second command, and a walk of a
# handful of processes costs well under a millisecond.
SAMPLE_S = 0.02


@dataclass(frozen=True, slots=True)
class Measurement:
    argv: tuple[str, ...]
    seconds: float
    peak_rss: int
    """Bytes; see the module docstring."""
    peak_pss: int
    returncode: int
    samples: int

    def to_json(self) -> dict[str, object]:
        return {"argv": list(self.argv), "seconds": round(self.seconds, 3),
                "peak_rss": self.peak_rss, "peak_pss": self.peak_pss,
                "returncode": self.returncode}


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


def _rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) of one process in bytes; (0, 0) once it is gone."""
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    return rss, pss


_SYS_KCMP = {"x86_64": 312, "aarch64": 272}.get(os.uname().machine)
_KCMP_VM = 1
_libc = ctypes.CDLL(None, use_errno=True)


def _shares_vm(parent: int, child: int) -> bool:
    """True when ``child`` runs in ``parent``'s address space (vfork before execve)."""
    if _SYS_KCMP is None:
        return False
    return int(_libc.syscall(_SYS_KCMP, parent, child, _KCMP_VM, 0, 0)) == 0


def tree_memory(root: int) -> tuple[int, int]:
    """(sum of Rss, sum of Pss) over ``root`` and all its descendants right now, each
    address space once."""
    rss = pss = 0
    stack: list[tuple[int, int | None]] = [(root, None)]
    seen: set[int] = set()
    while stack:
        pid, parent = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        if parent is None or not _shares_vm(parent, pid):
            r, p = _rollup(pid)
            rss += r
            pss += p
        stack += [(child, pid) for child in _children(pid)]
    return rss, pss


class _Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.stop = threading.Event()
        self.peak_rss = self.peak_pss = self.samples = 0

    def run(self) -> None:
        while not self.stop.is_set():
            rss, pss = tree_memory(self.pid)
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)
            self.samples += 1
            self.stop.wait(SAMPLE_S)


def measure(argv: Sequence[str], *, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, log: Path | None = None) -> Measurement:
    """Run ``argv`` to completion; stdout and stderr go to ``log`` (or nowhere)."""
    out = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        started = time.monotonic()
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env) if env is not None else None,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        sampler = _Sampler(proc.pid)
        sampler.start()
        proc.wait()
        seconds = time.monotonic() - started
        sampler.stop.set()
        sampler.join()
    finally:
        if log is not None:
            out.close()  # type: ignore[union-attr]
    return Measurement(tuple(argv), seconds, sampler.peak_rss, sampler.peak_pss,
                       proc.returncode, sampler.samples)
