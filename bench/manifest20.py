"""The pipeline alone on a manifest of many images: cold, no-op and one-tag-bump times.

::

    .venv/bin/python bench/manifest20.py [--images 20] [--noop-runs 5] [--work DIR]

Issue 6 asks for the time of a no-op run and of a one-tag bump for a
manifest of 20 images. This builds the bench world with a batch of that
size (the Debian-like base plus one small top layer per image, see
bench/world.py), then, in one fresh build directory, times with
``doit -f dodo.py -d <dir>`` exactly as users run it:

1. the cold build of every image;
2. no-op reruns (median of ``--noop-runs``);
3. ``app00`` bumped from ``v1`` to ``v2`` (a new top layer on the same base).

It prints a table with the tasks each run executed (from the pipeline's
own "run.finished" log line). No peer: bench/run.py is the side-by-side
comparison; this measures the rework a user's CI pays.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO_ROOT / "bench"]
sys.path.insert(0, str(_REPO_ROOT))

from bench.ours import Ours, OursRun, write_manifest  # noqa: E402
from bench.recipes import MiB  # noqa: E402
from bench.world import WorldSpec, open_world  # noqa: E402

DEFAULT_WORK = Path("/tmp/rootfs-bench")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _row(what: str, run: OursRun) -> str:
    return (f"| {what:<28} | {run.seconds:8.2f} | {run.tasks_ran!s:>9} | "
            f"{run.tasks_up_to_date!s:>10} | {run.peak_rss // MiB:8} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/manifest20.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=20, help="images in the manifest (default 20)")
    p.add_argument("--noop-runs", type=int, default=5, help="no-op runs, median reported")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help="work directory; the generated world is cached in <work>/world")
    args = p.parse_args(argv)
    if args.images < 1 or args.noop_runs < 1:
        p.error("--images and --noop-runs must be at least 1")

    # The large image is not used here: keep its generation cheap.
    spec = WorldSpec(batch=args.images, bulk_tree_bytes=4 * MiB, bulk_files_bytes=4 * MiB)
    args.work.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="manifest20-", dir=args.work))
    try:
        with open_world(spec, cache=args.work / "world", run_dir=run_dir, log=_say) as world:
            (run_dir / "logs").mkdir()
            ours = Ours(world, run_dir / "logs")
            build = run_dir / "build"
            images = world.batch
            write_manifest(build, world, images)
            _say(f"manifest20: cold build of {len(images)} images")
            cold = ours.build(build)
            noops = []
            for i in range(args.noop_runs):
                _say(f"manifest20: no-op run {i + 1}/{args.noop_runs}")
                noops.append(ours.build(build))
            noop = sorted(noops, key=lambda r: r.seconds)[len(noops) // 2]
            _say("manifest20: app00 v1 -> v2")
            write_manifest(build, world, [world.image("app00", "v2"), *images[1:]])
            bump = ours.build(build)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    print(f"\nManifest of {len(images)} images ({images[0].uncompressed_bytes // MiB} MiB "
          "uncompressed each, one shared base)\n")
    print("| run                          | seconds  | tasks ran | up to date | peak RSS |")
    print("|------------------------------|----------|-----------|------------|----------|")
    print(_row("cold build", cold))
    print(_row(f"no-op (median of {len(noops)})", noop))
    print(_row("one tag bumped (app00 v2)", bump))
    print(f"\nno-op runs: {', '.join(f'{r.seconds:.2f}' for r in noops)} s; "
          f"no-op / cold = {statistics.median(r.seconds for r in noops) / cold.seconds:.1%}; "
          f"bump / cold = {bump.seconds / cold.seconds:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
