"""Time ``build_ext4``'s phases on one generated flat image, median of N runs.

::

    .venv/bin/python bench/ext4_step.py [--files 7000] [--size-mib 200] [--runs 5]
                                        [--work DIR] [--profile]

The flat image is made the way the pipeline makes it: the test harness's
``debian_like`` layers (base + update, gzip) go through the real
``unpack_layer`` into layer stores and ``flatten_image`` into a staging tree
(files copied out of the layer packs), so it has the pipeline's real host modes,
owners and link structure. It is built once per parameter set and cached in
``<work>/<files>-<size>``; each run then builds a fresh ``img.ext4`` from it.

Prints, per phase of ``Ext4Result.timings``, the median and range in
seconds, plus this process's CPU seconds (the Python side, which holds the
GIL in a batch) and its children's (mkfs.ext4, debugfs, e2fsck), and checks
that every run gave the same sha256. ``--profile`` adds a cProfile of one
more run (top functions by cumulative time). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import pstats
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

import structlog

_REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ first on sys.path; we want the repo root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO_ROOT / "bench"]
sys.path.insert(0, str(_REPO_ROOT))

from pipeline.base.digest import parse_digest  # noqa: E402
from pipeline.ext4.build import Ext4Result, build_ext4  # noqa: E402
from pipeline.ext4.options import Ext4Options  # noqa: E402
from pipeline.flat.image import HEADER_NAME, read_header  # noqa: E402
from pipeline.flat.staging import flatten_image  # noqa: E402
from pipeline.layers.unpack import unpack_layer  # noqa: E402
from pipeline.registry.resolve import LayerRef  # noqa: E402
from tests.harness.debian import debian_like  # noqa: E402

DEFAULT_WORK = Path("/tmp/rootfs-ext4-step")
MiB = 1024 * 1024


def make_flat(work: Path, *, files: int, size: int) -> Path:
    """The cached flat image for these parameters, unpacked and flattened on first use."""
    root = work / f"{files}-{size // MiB}MiB"
    done = root / "flat-dir"
    # A flat image of an older format (its header has another name) is made again.
    if done.is_file() and (Path(done.read_text()) / HEADER_NAME).is_file():
        return Path(done.read_text())
    shutil.rmtree(root, ignore_errors=True)
    (root / "blobs").mkdir(parents=True)
    started = time.monotonic()
    stores = []
    for layer in debian_like(files=files, size=size).layers():
        blob = root / "blobs" / layer.digest.split(":")[1]
        blob.write_bytes(layer.data)
        ref = LayerRef(digest=parse_digest(layer.digest), size=layer.size,
                       media_type=layer.media_type, diff_id=parse_digest(layer.diff_id))
        stores.append(unpack_layer(blob, ref, root / "layers"))
    flat = flatten_image(stores, root / "flat")
    done.write_text(str(flat))
    print(f"made flat image {flat} in {time.monotonic() - started:.1f} s", file=sys.stderr)
    return flat


def one_run(flat: Path, output: Path) -> tuple[Ext4Result, float, float]:
    """(result, own CPU seconds, children's CPU seconds) of one build."""
    output.unlink(missing_ok=True)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time()
    result = build_ext4(flat, output, Ext4Options(), seed="bench")
    own = time.process_time() - cpu
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    kids = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    return result, own, kids


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/ext4_step.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=7000)
    p.add_argument("--size-mib", type=int, default=200)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--profile", action="store_true", help="cProfile one extra run")
    args = p.parse_args(argv)
    # Library code never configures logging; this script keeps its output to the table.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))

    flat = make_flat(args.work, files=args.files, size=args.size_mib * MiB)
    header = read_header(flat / HEADER_NAME)
    output = args.work / "out" / "img.ext4"
    output.parent.mkdir(parents=True, exist_ok=True)
    results: list[Ext4Result] = []
    own: list[float] = []
    kids: list[float] = []
    for _ in range(args.runs):
        result, cpu, child = one_run(flat, output)
        results.append(result)
        own.append(cpu)
        kids.append(child)

    phases = list(results[0].timings)
    print(f"build_ext4 on {flat} ({header.entries} entries, {header.inodes} inodes, "
          f"{header.regular_bytes / MiB:.0f} MiB of files; image "
          f"{results[0].size / MiB:.0f} MiB), {args.runs} runs, load "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{'phase':<14}{'median s':>10}{'min':>8}{'max':>8}")
    rows = [(k, [r.timings[k] for r in results]) for k in phases]
    rows += [("python cpu", own), ("children cpu", kids)]
    for name, values in rows:
        print(f"{name:<14}{statistics.median(values):>10.3f}{min(values):>8.3f}"
              f"{max(values):>8.3f}")
    digests = {r.sha256 for r in results}
    print("sha256:", *digests, "(same every run)" if len(digests) == 1 else "DIFFERS")

    if args.profile:
        profiler = cProfile.Profile()
        output.unlink(missing_ok=True)
        profiler.runcall(build_ext4, flat, output, Ext4Options(), seed="bench")
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
