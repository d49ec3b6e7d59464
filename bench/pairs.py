#!/usr/bin/env python3
"""Cold builds of ``app00`` by two or more checkouts, alternating: is a change faster?

    .venv/bin/python bench/pairs.py 8 /path/to/checkout-a /path/to/checkout-b

Each checkout needs its own ``.venv`` with the package installed (``pip install -e .``).
Round ``i`` builds once with every checkout, in turn, the order reversed every
other round so that neither side always follows the other; each build starts
from an empty directory after a ``sync``, against one registry serving the
bench world (``bench/world.py``, generated on first use). Printed per build:
wall seconds, the process tree's CPU (user, sys) and the seconds per task
family from the run's log (run and summarised by ``bench.ours.Ours``, as in the
bench's scenarios); at the end, the medians per checkout.

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
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.ours import Ours, write_manifest  # noqa: E402
from bench.world import WorldSpec, open_world  # noqa: E402


def _log_dir(run_dir: Path, k: int) -> Path:
    """Checkout ``k``'s directory for its runs' log (``ours.log``)."""
    path = run_dir / f"logs-{k}"
    path.mkdir()
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rounds", type=int, help="builds per checkout")
    parser.add_argument("checkouts", nargs="+", type=Path, help="repository checkouts")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get(
        "ROOTFS_BENCH_DIR", "/tmp/rootfs-bench")), help="the bench's work directory")
    args = parser.parse_args()
    checkouts = [c.resolve() for c in args.checkouts]
    run_dir = args.work / "pairs"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    walls: dict[Path, list[float]] = {c: [] for c in checkouts}
    steps: dict[Path, list[dict[str, float]]] = {c: [] for c in checkouts}

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with open_world(WorldSpec(), cache=args.work / "world", run_dir=run_dir,
                    log=log) as world:
        try:
            # The bench's own runner: the same command line, environment and log summary.
            ours = {c: Ours(world, _log_dir(run_dir, k), checkout=c)
                    for k, c in enumerate(checkouts)}
        except RuntimeError as err:
            parser.error(str(err))
        image = world.image("app00")
        for i in range(args.rounds):
            for checkout in checkouts if i % 2 == 0 else checkouts[::-1]:
                build = run_dir / "build"
                shutil.rmtree(build, ignore_errors=True)
                write_manifest(build, world, [image])
                os.sync()
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                try:
                    run = ours[checkout].build(build)
                except RuntimeError as err:
                    log(str(err))
                    return 1
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                walls[checkout].append(run.seconds)
                steps[checkout].append(run.steps)
                print(f"{i} {checkout}: {run.seconds:.3f} s, user"
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
