"""The native ext4 writer next to ``mkfs.ext4 -d`` on the Debian-like image, same run.

::

    .venv/bin/python bench/native_ext4.py [--files 7000] [--size-mib 240] [--runs 5]
                                          [--work DIR] [--profile]

The image is bench/ext4_step.py's flat image (the harness's ``debian_like``
layers through the real ``unpack_layer`` and ``flatten_image``), cached per
parameter set; its layer stores are read once before measuring, so both
sides start from a warm page cache. Each run measures, in alternating
order and each after an untimed ``sync``:

- **mkfs**: ``mkfs.ext4 -d`` of the staging tree with the mkfs builder's
  own arguments and mke2fs.conf (no debugfs fixup, no e2fsck, no hash: the
  floor of the mkfs path; the plan is made beforehand, untimed);
- **native**: a fresh Python process that reads the entries, then calls
  ``write_ext4`` with content straight from the layer packs (as the native
  builder does). The ratio uses the ``write_ext4`` call; the whole process
  (interpreter start, imports, reading entries.jsonl) and the time to read
  the entries are reported beside it.

Peak memory is the sampled RSS of each side's process tree (bench/procmon.py).
Prints medians, the native writer's phases, both ratios, the load average
before and after, and checks that every native run gave the same bytes and
that e2fsck -fn finds the image clean. ``--profile`` adds a cProfile of one
more ``write_ext4`` in this process (top functions by own time). Not a test.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import json
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

_REPO_ROOT = Path(__file__).resolve().parents[1]
# Run as a script, Python puts bench/ first on sys.path; we want the repo root.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _REPO_ROOT / "bench"]
sys.path.insert(0, str(_REPO_ROOT))

from bench.ext4_step import MiB, make_flat  # noqa: E402
from bench.procmon import measure  # noqa: E402
from pipeline.ext4.build import (  # noqa: E402
    _MKE2FS_CONF,
    derive_uuids,
    measure_usage,
    plan_for,
    read_flat_entries,
)
from pipeline.ext4.native import write_ext4  # noqa: E402
from pipeline.ext4.options import Ext4Options  # noqa: E402
from pipeline.ext4.tools import fake_time_env, fsck_image  # noqa: E402
from pipeline.flat.image import HEADER_NAME, FlatEntry, read_header  # noqa: E402
from pipeline.flat.lookup import ContentRef, content_files  # noqa: E402
from pipeline.layers.store import LayerStore  # noqa: E402

DEFAULT_WORK = Path("/tmp/rootfs-native-bench")
SEED = "bench"


def store_content(flat: Path) -> Callable[[FlatEntry], ContentRef | None]:
    """Where each regular file's bytes are in its layer's pack (as the native builder
    finds them)."""
    layers = flat.parents[1] / "layers"             # make_flat's <root>/flat/<key>
    return content_files(layers, read_header(flat / HEADER_NAME).chain)


def _child(flat: Path, output: Path) -> None:
    """The native side, in its own process: prints one JSON line."""
    started = time.monotonic()
    entries = read_flat_entries(flat)
    read = time.monotonic()
    content = store_content(flat)
    ready = time.monotonic()
    result = write_ext4(entries, content, output, Ext4Options(), seed=SEED)
    done = time.monotonic()
    print(json.dumps({"write": done - ready, "entries": read - started,
                      "timings": dict(result.timings)}))


def mkfs_argv(flat: Path, output: Path, conf: Path) -> list[str]:
    options = Ext4Options()
    plan = plan_for(measure_usage(read_flat_entries(flat), options), options)
    fs_uuid, hash_seed = derive_uuids(SEED)
    conf.write_text(_MKE2FS_CONF, encoding="ascii")
    return ["mkfs.ext4", "-F", "-q", "-T", "rootfs", "-b", "4096", "-I", "256",
            "-N", str(plan.layout.inodes), "-m", "0", "-U", fs_uuid,
            "-J", f"size={plan.layout.journal_blocks * 4096 // MiB}",
            "-E", f"root_owner=0:0,hash_seed={hash_seed},nodiscard,lazy_itable_init=0,"
                  "lazy_journal_init=0",
            "-d", str(flat / "rootfs"), str(output), str(plan.layout.blocks)]


def _warm(flat: Path) -> None:
    """Read every layer pack once, so neither side pays for cold reads."""
    layers = flat.parents[1] / "layers"
    for digest in read_header(flat / HEADER_NAME).chain:
        with open(LayerStore.open(layers, digest).pack_path, "rb") as f:
            while f.read(1 << 20):
                pass


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/native_ext4.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=7000)
    p.add_argument("--size-mib", type=int, default=240)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    p.add_argument("--profile", action="store_true", help="cProfile one more write_ext4")
    p.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(*args.child)
        return 0

    flat = make_flat(args.work, files=args.files, size=args.size_mib * MiB)
    header = read_header(flat / HEADER_NAME)
    _warm(flat)
    load_before = os.getloadavg()
    mkfs_s: list[float] = []
    write_s: list[float] = []
    process_s: list[float] = []
    entries_s: list[float] = []
    mkfs_rss: list[int] = []
    native_rss: list[int] = []
    phases: dict[str, list[float]] = {}
    digests: set[str] = set()
    with tempfile.TemporaryDirectory(dir=args.work) as scratch_name:
        scratch = Path(scratch_name)
        native_out, mkfs_out, log = scratch / "native.ext4", scratch / "mkfs.ext4", scratch / "log"
        env = {**os.environ, "MKE2FS_CONFIG": str(scratch / "mke2fs.conf"), "LC_ALL": "C",
               **fake_time_env()}
        argv_mkfs = mkfs_argv(flat, mkfs_out, scratch / "mke2fs.conf")
        argv_native = [sys.executable, str(Path(__file__).resolve()), "--child", str(flat),
                       str(native_out)]
        for run in range(args.runs):
            for side in ("mkfs", "native") if run % 2 == 0 else ("native", "mkfs"):
                subprocess.run(["sync"], check=True)
                if side == "mkfs":
                    mkfs_out.unlink(missing_ok=True)
                    m = measure(argv_mkfs, env=env)
                    mkfs_s.append(m.seconds)
                    mkfs_rss.append(m.peak_rss)
                else:
                    log.unlink(missing_ok=True)
                    m = measure(argv_native, log=log)
                    out = json.loads(log.read_text().strip().splitlines()[-1])
                    write_s.append(out["write"])
                    process_s.append(m.seconds)
                    entries_s.append(out["entries"])
                    native_rss.append(m.peak_rss)
                    for step, seconds in out["timings"].items():
                        phases.setdefault(step, []).append(seconds)
                    with open(native_out, "rb") as image:
                        digests.add(hashlib.file_digest(image, "sha256").hexdigest())
                if m.returncode != 0:
                    raise SystemExit(f"{side} failed ({m.returncode}): {m.argv}")
            print(f"run {run + 1}: mkfs {mkfs_s[-1]:.3f} s, native write_ext4 "
                  f"{write_s[-1]:.3f} s (process {process_s[-1]:.3f} s)", file=sys.stderr)
        fsck_image(native_out)
        if args.profile:
            profiler = cProfile.Profile()
            entries = read_flat_entries(flat)
            native_out.unlink()
            profiler.runcall(write_ext4, entries, store_content(flat), native_out,
                             Ext4Options(), seed=SEED)
    load_after = os.getloadavg()

    mkfs_median = statistics.median(mkfs_s)
    print(f"{header.entries} entries, {header.inodes} inodes, "
          f"{header.regular_bytes / MiB:.0f} MiB of files; {args.runs} runs; load average "
          f"{load_before[0]:.2f} before, {load_after[0]:.2f} after ({os.cpu_count()} cores)")
    print(f"mkfs.ext4 -d              median s {_median(mkfs_s)}, "
          f"peak RSS {max(mkfs_rss) / MiB:.0f} MiB")
    print(f"native write_ext4         median s {_median(write_s)}")
    print(f"native whole process      median s {_median(process_s)}, "
          f"peak RSS {max(native_rss) / MiB:.0f} MiB (reading entries.jsonl "
          f"{statistics.median(entries_s):.3f} s of it)")
    print("native phases (median s)  " + ", ".join(
        f"{k} {statistics.median(v):.3f}" for k, v in phases.items()))
    print(f"ratio write_ext4 / mkfs   {statistics.median(write_s) / mkfs_median:.2f} "
          f"(target <= 0.50)")
    print(f"native bytes              {'same every run' if len(digests) == 1 else 'DIFFER'}"
          f", e2fsck -fn clean")
    if args.profile:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
