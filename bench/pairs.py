#!/usr/bin/env python3
"""Cold builds of ``app00`` by two or more checkouts, alternating: is a change faster?

    .venv/bin/python bench/pairs.py 8 /path/to/checkout-a /path/to/checkout-b

Each checkout needs its own ``.venv`` with the package installed (``pip install -e .``).
Round ``i`` builds once with every checkout, in turn, the order reversed every
other round so that neither side always follows the other; each build starts
from an empty directory after a ``sync``, against one registry serving the
bench world (``bench/world.py``, generated on first use). Printed per build:
wall seconds, the process tree's CPU (user, sys) and the seconds per task
family from the run's log; at the end, the medians per checkout.

Single cold builds on a small machine scatter by a tenth of a second and
more from one run to the next: a difference is worth believing when it holds
across the medians of eight or more pairs. This is a tool for deciding, not
a result: the bench's scenarios (``bench/run.py``) are the measurements.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ours import OursRun, _summarise, write_manifest  # noqa: E402
from bench.world import WorldSpec, open_world  # noqa: E402


def _steps(stderr: str, scratch: Path) -> dict[str, float]:
    """Seconds per task family in a run's log, read the way the bench reads it."""
    log = scratch / "run.log"
    log.write_text(stderr)
    run = OursRun(seconds=0.0, peak_rss=0, peak_pss=0)
    _summarise(log, run, 0)
    return run.steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rounds", type=int, help="builds per checkout")
    parser.add_argument("checkouts", nargs="+", type=Path, help="repository checkouts")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get(
        "ROOTFS_BENCH_DIR", "/tmp/rootfs-bench")), help="the bench's work directory")
    args = parser.parse_args()
    checkouts = [c.resolve() for c in args.checkouts]
    for c in checkouts:
        if not (c / ".venv/bin/doit").exists():
            parser.error(f"{c} has no .venv/bin/doit: python3 -m venv {c}/.venv &&"
                         f" {c}/.venv/bin/pip install -e {c}")
    run_dir = args.work / "pairs"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    walls: dict[Path, list[float]] = {c: [] for c in checkouts}
    steps: dict[Path, list[dict[str, float]]] = {c: [] for c in checkouts}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with open_world(WorldSpec(), cache=args.work / "world", run_dir=run_dir,
                    log=log) as world:
        image = world.image("app00")
        for i in range(args.rounds):
            for checkout in checkouts if i % 2 == 0 else checkouts[::-1]:
                build = run_dir / "build"
                shutil.rmtree(build, ignore_errors=True)
                write_manifest(build, world, [image])
                os.sync()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.monotonic()
                done = subprocess.run([str(checkout / ".venv/bin/doit"), "-f",
                                       str(checkout / "dodo.py"), "-d", str(build)],
                                      capture_output=True, text=True)
                wall = time.monotonic() - started
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                if done.returncode:
                    log(done.stderr[-3000:])
                    return 1
                walls[checkout].append(wall)
                steps[checkout].append(_steps(done.stderr, run_dir))
                print(f"{i} {checkout}: {wall:.3f} s, user"
                      f" {after.ru_utime - before.ru_utime:.2f} s, sys"
                      f" {after.ru_stime - before.ru_stime:.2f} s, {steps[checkout][-1]}",
                      flush=True)
    for checkout in checkouts:
        families = sorted({f for s in steps[checkout] for f in s})
        medians = {f: round(statistics.median(s.get(f, 0.0) for s in steps[checkout]), 3)
                   for f in families}
        print(f"{checkout}: median {statistics.median(walls[checkout]):.3f} s, min"
              f" {min(walls[checkout]):.3f} s, steps {medians}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
