"""A manifest of a thousand small images: cold build, no-op, ``doit list``, memory, sizes.

::

    .venv/bin/python bench/manifest1000.py [--images 1000] [--compare 100] [--runs 5]
                                           [--work DIR] [--keep DIR]

Issue 16: teams that batch-produce images keep hundreds to thousands of
them in one manifest, and every CI job and local run pays the no-op. This
builds a bench world of ``--images`` small images sharing one small base
layer (bench/world.py with a Debian-like base of a few MiB and a 64 KiB top
layer per image), then, with ``doit -f dodo.py -d <dir>`` as users run it:

1. the cold build of every image (wall time, peak memory of the process tree);
2. no-op reruns and ``doit list`` (median of ``--runs`` each);
3. the same for a manifest of the first ``--compare`` images in a directory of
   its own, so the table shows what one more image adds to a no-op;
4. the sizes of the lock file, the doit database, the cache and ``out/``
   (bytes on disk: the ext4 outputs are sparse).

``--keep DIR`` moves the large build directory to ``DIR`` afterwards (no-op
runs need no registry), for profiling: ``py-spy record -- doit -d DIR``.
"""

from __future__ import annotations

import argparse
import os
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
from bench.world import World, WorldSpec, open_world  # noqa: E402

DEFAULT_WORK = Path("/tmp/rootfs-bench")
KiB = 1 << 10
# Small on purpose: the subject is the per-image overhead, not the bytes.
# 4 MiB / 600 entries of base and 64 KiB of top layer per image keep a
# thousand images' outputs (sparse) and blobs to a few GB on disk.
SMALL_WORLD = {"base_budget": 4 * MiB, "base_files": 600, "top_bytes": 64 * KiB,
               "bulk_tree_bytes": 1 * MiB, "bulk_files_bytes": 1 * MiB}


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _disk_bytes(path: Path) -> int:
    """Bytes allocated on disk under ``path`` (st_blocks: sparse files count what they
    use; a hard-linked file counts once, as a staging tree's further names do)."""
    if path.is_file():
        return path.stat().st_blocks * 512
    total = 0
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _median(runs: list[OursRun]) -> OursRun:
    return sorted(runs, key=lambda r: r.seconds)[len(runs) // 2]


def _measure(ours: Ours, build: Path, runs: int, label: str) -> tuple[OursRun, OursRun,
                                                                      list[OursRun]]:
    noops, lists = [], []
    for i in range(runs):
        _say(f"manifest1000: {label}: no-op run {i + 1}/{runs}, doit list")
        noops.append(ours.build(build))
        lists.append(ours.build(build, command=["list"]))
    return _median(noops), _median(lists), noops


def _row(what: str, run: OursRun) -> str:
    return (f"| {what:<34} | {run.seconds:8.2f} | {run.tasks_ran!s:>9} | "
            f"{run.tasks_up_to_date!s:>10} | {run.peak_rss // MiB:8} |")


def _sizes(build: Path) -> list[tuple[str, int]]:
    cache = build / ".cache"
    return [("images.lock.json", _disk_bytes(build / "images.lock.json")),
            ("doit database (.cache/doit.db)", _disk_bytes(cache / "doit.db")),
            ("cache (.cache, all of it)", _disk_bytes(cache)),
            ("out/ (ext4 + records)", _disk_bytes(build / "out"))]


def _cold(ours: Ours, world: World, build: Path, count: int) -> OursRun:
    write_manifest(build, world, world.batch[:count])
    _say(f"manifest1000: cold build of {count} images in {build}")
    return ours.build(build)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/manifest1000.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=1000, help="images in the manifest")
    p.add_argument("--compare", type=int, default=100,
                   help="images in the smaller manifest the no-op is compared with (0: none)")
    p.add_argument("--runs", type=int, default=5, help="no-op and list runs, median reported")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK,
                   help="work directory; the generated world is cached in <work>/world")
    p.add_argument("--keep", type=Path, default=None,
                   help="move the large build directory here afterwards (for profiling)")
    args = p.parse_args(argv)
    if args.images < 1 or args.runs < 1 or not 0 <= args.compare < args.images:
        p.error("--images and --runs must be at least 1, --compare below --images")
    if args.keep is not None and args.keep.exists():
        p.error(f"--keep {args.keep}: already exists")

    spec = WorldSpec(batch=args.images, **SMALL_WORLD)
    args.work.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="manifest1000-", dir=args.work))
    small_run = small_list = None
    try:
        with open_world(spec, cache=args.work / "world", run_dir=run_dir, log=_say) as world:
            (run_dir / "logs").mkdir()
            ours = Ours(world, run_dir / "logs")
            per_image = world.batch[0].uncompressed_bytes
            if args.compare:
                small = run_dir / "small"
                _cold(ours, world, small, args.compare)
                small_run, small_list, _ = _measure(ours, small, args.runs, f"{args.compare}")
                shutil.rmtree(small)
            build = run_dir / "build"
            cold = _cold(ours, world, build, args.images)
            noop, listed, noops = _measure(ours, build, args.runs, f"{args.images}")
            sizes = _sizes(build)
            if args.keep is not None:
                shutil.move(build, args.keep)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)

    print(f"\nManifest of {args.images} images ({per_image / MiB:.1f} MiB uncompressed "
          "each, one shared base layer)\n")
    print("| run                                | seconds  | tasks ran | up to date | peak RSS |")
    print("|------------------------------------|----------|-----------|------------|----------|")
    print(_row(f"cold build of {args.images}", cold))
    print(_row(f"no-op of {args.images} (median of {args.runs})", noop))
    print(_row(f"doit list, {args.images} (median)", listed))
    if small_run is not None and small_list is not None:
        print(_row(f"no-op of {args.compare} (median of {args.runs})", small_run))
        print(_row(f"doit list, {args.compare} (median)", small_list))
        grow = (noop.seconds - small_run.seconds) / (args.images - args.compare) * 1000
        grow_list = (listed.seconds - small_list.seconds) / (args.images - args.compare) * 1000
        print(f"\nno-op grows by {grow:.2f} ms per image, doit list by {grow_list:.2f} ms "
              f"({args.compare} -> {args.images} images)")
    print(f"no-op runs: {', '.join(f'{r.seconds:.2f}' for r in noops)} s; "
          f"cold per image: {cold.seconds / args.images * 1000:.0f} ms; "
          f"peak RSS of the cold build: {cold.peak_rss / MiB:.0f} MiB "
          f"(PSS {cold.peak_pss / MiB:.0f} MiB)\n")
    print("| file                            | bytes on disk |")
    print("|---------------------------------|---------------|")
    for what, size in sizes:
        print(f"| {what:<31} | {size:13,} |")
    ratio = statistics.median(r.seconds for r in noops) / cold.seconds
    print(f"\nno-op median / cold = {ratio:.1%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
