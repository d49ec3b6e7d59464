"""Native writer vs ``mkfs.ext4 -d`` on the same staged tree: wall time and peak memory.

::

    .venv/bin/python -m tests.ext4.native.bench_native [--files 7000] [--size-mib 160]
                                                      [--runs 5] [--work DIR]

The flat image is bench/ext4_step.py's (the harness's debian_like layers,
unpacked and flattened by the pipeline). Each run, in a fresh process:
``mkfs.ext4 -d`` alone on the staging tree with the mkfs builder's own
arguments and mke2fs.conf (no debugfs fixup, no e2fsck, no hash: the floor
of the mkfs path), then ``write_ext4`` reading the entries and the staged
content. Prints medians and the native process's peak RSS, and checks the
native image with e2fsck and that every run gave the same bytes. Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.ext4_step import DEFAULT_WORK, MiB, make_flat
from pipeline.ext4.build import (
    _MKE2FS_CONF,
    derive_uuids,
    measure_usage,
    plan_for,
    read_flat_entries,
)
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.tools import fake_time_env, fsck_image

_NATIVE = """
import sys, time
from pathlib import Path
from pipeline.ext4.build import read_flat_entries
from pipeline.ext4.native import staged_content, write_ext4
from pipeline.ext4.options import Ext4Options
started = time.monotonic()
flat = Path(sys.argv[1])
entries = read_flat_entries(flat)
read = time.monotonic() - started
result = write_ext4(entries, staged_content(flat), Path(sys.argv[2]), Ext4Options(), seed="bench")
# VmHWM, not ru_maxrss: the latter keeps the forking parent's high-water mark across exec.
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(time.monotonic() - started, read, hwm, result.timings)
"""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def mkfs_run(flat: Path, output: Path, scratch: Path) -> tuple[float, float]:
    options = Ext4Options()
    entries = read_flat_entries(flat)
    plan = plan_for(measure_usage(entries, options), options)
    fs_uuid, hash_seed = derive_uuids("bench")
    conf = scratch / "mke2fs.conf"
    conf.write_text(_MKE2FS_CONF, encoding="ascii")
    output.unlink(missing_ok=True)
    argv = ["mkfs.ext4", "-F", "-q", "-T", "rootfs", "-b", "4096", "-I", "256",
            "-N", str(plan.layout.inodes), "-m", "0", "-U", fs_uuid,
            "-J", f"size={plan.layout.journal_blocks * 4096 // MiB}",
            "-E", f"root_owner=0:0,hash_seed={hash_seed},nodiscard,lazy_itable_init=0,"
                  "lazy_journal_init=0",
            "-d", str(flat / "rootfs"), str(output), str(plan.layout.blocks)]
    env = {**os.environ, "MKE2FS_CONFIG": str(conf), "LC_ALL": "C", **fake_time_env()}
    started, cpu = time.monotonic(), _children_cpu()
    subprocess.run(argv, check=True, env=env, stdin=subprocess.DEVNULL)
    return time.monotonic() - started, _children_cpu() - cpu


def native_run(flat: Path, output: Path) -> tuple[float, float, float, int, str]:
    output.unlink(missing_ok=True)
    started, cpu = time.monotonic(), _children_cpu()
    out = subprocess.run([sys.executable, "-c", _NATIVE, str(flat), str(output)], check=True,
                         capture_output=True, text=True).stdout.split(maxsplit=3)
    wall = time.monotonic() - started
    return wall, _children_cpu() - cpu, float(out[0]), int(out[2]), out[3].strip()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", type=int, default=7000)
    p.add_argument("--size-mib", type=int, default=160)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--work", type=Path, default=DEFAULT_WORK)
    args = p.parse_args()
    flat = make_flat(args.work, files=args.files, size=args.size_mib * MiB)
    entries = read_flat_entries(flat)
    mkfs_s, mkfs_cpu, native_wall, native_cpu, native_in, rss = [], [], [], [], [], []
    digests = set()
    with tempfile.TemporaryDirectory(dir=args.work) as scratch_name:
        scratch = Path(scratch_name)
        for _ in range(args.runs):
            wall, cpu = mkfs_run(flat, scratch / "mkfs.ext4", scratch)
            mkfs_s.append(wall)
            mkfs_cpu.append(cpu)
            wall, cpu, inside, peak, timings = native_run(flat, scratch / "native.ext4")
            native_wall.append(wall)
            native_cpu.append(cpu)
            native_in.append(inside)
            rss.append(peak)
            with open(scratch / "native.ext4", "rb") as image:
                digests.add(hashlib.file_digest(image, "sha256").hexdigest())
        fsck_image(scratch / "native.ext4")
    regular = sum(e.size for e in entries if e.size and e.link_group is None)
    print(f"{len(entries)} entries, {regular / MiB:.0f} MiB of files, {args.runs} runs, "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"mkfs.ext4 -d alone          median {statistics.median(mkfs_s):.3f} s "
          f"(min {min(mkfs_s):.3f})")
    print(f"native, in process          median {statistics.median(native_in):.3f} s "
          f"(min {min(native_in):.3f}); last phases {timings}")
    print(f"native, process wall        median {statistics.median(native_wall):.3f} s "
          f"(includes interpreter start and imports)")
    ratio = statistics.median(native_in) / statistics.median(mkfs_s)
    print(f"native / mkfs (in process)  {ratio:.2f}")
    print(f"cpu (user+sys) median       mkfs.ext4 -d {statistics.median(mkfs_cpu):.3f} s, "
          f"native process {statistics.median(native_cpu):.3f} s (interpreter start and "
          f"imports included)")
    print(f"native peak RSS             {max(rss) / 1024:.0f} MiB")
    print(f"native bytes                {'same every run' if len(digests) == 1 else 'DIFFER'}; "
          f"e2fsck -fn clean")
    return 0 if len(digests) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
