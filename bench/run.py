"""One command: set up the world, run us and the peer side by side, print the ratios.

::

    .venv/bin/python bench/run.py [--runs N] [--quick] [--scenario 1,2,...]
                                  [--builder native,mkfs] [--work DIR] [--keep]
                                  [--json PATH] [--profile 1|2|5|remote]

See bench/README.md for what each scenario measures and docs/benchmarks.md
for the latest numbers. Exit status: 0 when the bench ran (targets missed
are reported, not fatal: this is a measurement, not a test), 1 when a side
failed to build, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ itself first on sys.path; the modules
# here are meant as the package ``bench`` beside ``pipeline`` and ``tests``.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO_ROOT / "bench"]
sys.path.insert(0, str(_REPO_ROOT))

from bench.peer import ensure_peer_tools  # noqa: E402
from bench.profiling import PROFILE_SCENARIOS, profile_ours  # noqa: E402
from bench.report import render, revision, write_json  # noqa: E402
from bench.scenarios import SCENARIOS, Bench, with_dependencies  # noqa: E402
from bench.world import World, WorldSpec, open_world  # noqa: E402

DEFAULT_RUNS = 3
WORK_VAR = "ROOTFS_BENCH_DIR"
# /tmp here is the root disk, not tmpfs; a run needs about 10 GB at its peak.
DEFAULT_WORK = Path("/tmp/rootfs-bench")
# Warming reads every blob once so the first measured side does not pay for
# cold disk reads the others then skip.
_WARM_CHUNK = 1 << 20


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=None,
                   help=f"runs per scenario, median reported (default {DEFAULT_RUNS})")
    p.add_argument("--quick", action="store_true", help="one run of each scenario")
    p.add_argument("--scenario", action="append", default=None,
                   help=f"scenarios to run, comma separated or repeated: {', '.join(SCENARIOS)} "
                        "(default all; 3 and 4 also run what they continue from)")
    p.add_argument("--builder", action="append", default=None,
                   help="the ext4 builder(s) of our side, comma separated or repeated: "
                        "native, mkfs (default native); each runs every scenario against "
                        "its own peer run, one after the other in this bench run")
    p.add_argument("--work", type=Path, default=None,
                   help=f"work directory (default ${WORK_VAR} or {DEFAULT_WORK}); the "
                        "generated world is cached in <work>/world")
    p.add_argument("--keep", action="store_true",
                   help="keep this run's registry storage and build directories")
    p.add_argument("--json", type=Path, default=None,
                   help="result file (default <work>/results/<time>/bench.json)")
    p.add_argument("--profile", choices=PROFILE_SCENARIOS, default=None,
                   help="after measuring, profile our side of one scenario with py-spy")
    args = p.parse_args(argv)
    if args.quick and args.runs is not None:
        p.error("--quick means one run; give either --quick or --runs")
    args.runs = 1 if args.quick else (args.runs or DEFAULT_RUNS)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    chosen = [s.strip() for group in (args.scenario or [",".join(SCENARIOS)])
              for s in group.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(SCENARIOS)}")
    args.selected = with_dependencies(chosen)
    args.builders = [b.strip() for group in (args.builder or ["native"])
                     for b in group.split(",") if b.strip()]
    if any(b not in ("native", "mkfs") for b in args.builders) or not args.builders:
        p.error("--builder takes native and/or mkfs")
    args.work = (args.work or Path(os.environ.get(WORK_VAR) or DEFAULT_WORK)).resolve()
    return args


def _warm(world: World) -> None:
    for image in world.images.values():
        for layer in image.layers:
            with open(world.blob_path(layer), "rb") as f:
                while f.read(_WARM_CHUNK):
                    pass


def _world_json(world: World) -> dict[str, object]:
    return {"key": world.spec.key(), "generate_seconds": world.generate_seconds,
            "images": {k: {"layers": len(v.layers), "uncompressed_bytes": v.uncompressed_bytes,
                           "compressed_bytes": v.compressed_bytes,
                           "entries": sum(layer.entries for layer in v.layers)}
                       for k, v in sorted(world.images.items())}}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if os.geteuid() != 0:
        # umoci unpack needs root to write real owners, devices and xattrs.
        _say("bench: run as root (the peer's umoci unpack writes owners and device nodes)")
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = args.work / "runs" / stamp
    results_dir = args.work / "results" / stamp
    results_dir.mkdir(parents=True, exist_ok=True)
    json_path = args.json or results_dir / "bench.json"
    started = time.monotonic()
    # Other work on the machine skews every number: say how busy it was.
    load_before = os.getloadavg()
    _say(f"bench: scenarios {', '.join(args.selected)}, {args.runs} run(s) of {revision()}; "
         f"logs in {results_dir}")
    ensure_peer_tools(_say)
    try:
        with open_world(WorldSpec(), cache=args.work / "world", run_dir=run_dir,
                        log=_say) as world:
            _warm(world)
            benches = {}
            for builder in args.builders:
                out = results_dir / builder if len(args.builders) > 1 else results_dir
                out.mkdir(parents=True, exist_ok=True)
                benches[builder] = Bench(world, run_dir / builder, out, _say, builder=builder)
            for index in range(1, args.runs + 1):
                for builder, bench in benches.items():
                    _say(f"bench: run {index} of {args.runs}, builder = {builder}")
                    bench.run(index, args.selected)
            for builder, bench in benches.items():
                table = f"builder = {builder}\n\n" + render(bench.results, args.runs)
                print(table)
                many = len(benches) > 1
                (results_dir / (f"table-{builder}.md" if many else "table.md")).write_text(
                    table + "\n")
                path = json_path.with_name(f"{json_path.stem}-{builder}.json") if many \
                    else json_path
                write_json(path, results=bench.results, runs=args.runs,
                           world=_world_json(world),
                           info={"scenarios_run": args.selected, "builder": builder,
                                 "loadavg_before": load_before,
                                 "loadavg_after": os.getloadavg(),
                                 "bench_seconds": round(time.monotonic() - started, 1)})
                _say(f"bench: results in {path}")
            if args.profile:
                summary = profile_ours(world, args.profile, run_dir, results_dir)
                print("\n" + summary.read_text())
                _say(f"bench: profile in {summary.with_suffix('')}.speedscope.json")
    except RuntimeError as err:
        _say(f"bench: failed: {err}")
        return 1
    finally:
        if not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    _say(f"bench: done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
