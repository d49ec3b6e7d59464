"""Cold fetch throughput of one large layer: our BlobCache next to `skopeo copy`.

Rerun with ``python bench/fetch_throughput.py`` (from the repository root, with
the project's venv: ``.venv/bin/python bench/fetch_throughput.py``). It

1. starts Debian's real ``docker-registry`` on a free loopback port (the test
   harness's fixture code, no auth);
2. pushes an image whose single layer is a plain tar holding ``--size-mb``
   (default 100) MB of random, incompressible bytes;
3. times, ``--runs`` times each (default 3) with a fresh, empty destination
   every time: ``BlobCache.fetch`` of that layer blob (verified, fsynced), and
   ``skopeo copy --src-tls-verify=false docker://127.0.0.1:PORT/... oci:<dir>``
   of the whole image (manifest, config and the same layer);
4. prints the median of each in MB/s (1 MB = 10^6 bytes, of layer bytes) and
   the ratio ours / skopeo, plus the median time of `skopeo copy` of a tiny
   image (its fixed cost: process start, manifest, config), so the ratio can
   be read fairly: skopeo's number includes that cost, ours includes only a
   new client (TLS context set-up included) and the blob.

Both run in the same process lifetime against the same registry, so disk and
CPU conditions are shared. No timing here is asserted anywhere; this is a
measurement, not a test.
"""

from __future__ import annotations

import argparse
import logging
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.base.digest import parse_digest  # noqa: E402
from pipeline.registry.blobcache import BlobCache  # noqa: E402
from pipeline.registry.client import RegistryClient  # noqa: E402
from pipeline.registry.credentials import NoCredentials  # noqa: E402
from tests.harness.images import file, make_image, make_layer  # noqa: E402
from tests.harness.push import push  # noqa: E402
from tests.harness.registry import start_registry  # noqa: E402

REPOSITORY = "bench/throughput"
TINY = "bench/tiny"
TAG = "v1"


def time_ours(host: str, digest: str, size: int, work: Path) -> float:
    """Seconds for one cold, verified BlobCache.fetch with a new client and empty cache."""
    cache_dir = work / "ours"
    shutil.rmtree(cache_dir, ignore_errors=True)
    start = time.perf_counter()
    with RegistryClient(credentials=NoCredentials()) as client:
        BlobCache(cache_dir).fetch(client, host, REPOSITORY, parse_digest(digest), size)
    elapsed = time.perf_counter() - start
    shutil.rmtree(cache_dir)
    return elapsed


def time_skopeo(host: str, work: Path, repository: str = REPOSITORY) -> float:
    """Seconds for one `skopeo copy` of the image into an empty OCI layout."""
    dest = work / "skopeo"
    shutil.rmtree(dest, ignore_errors=True)
    command = ["skopeo", "copy", "--quiet", "--src-tls-verify=false",
               f"docker://{host}/{repository}:{TAG}", f"oci:{dest}:{TAG}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, stdin=subprocess.DEVNULL)
    elapsed = time.perf_counter() - start
    shutil.rmtree(dest)
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=100, help="layer payload in MB (10^6)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each tool")
    args = parser.parse_args()
    # A script may configure logging (library code never does): keep the output to numbers.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    if shutil.which("skopeo") is None:
        print("skopeo is not installed: apt-get install skopeo", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="fetch-bench-") as tmp:
        work = Path(tmp)
        payload = random.Random(2024).randbytes(args.size_mb * 1_000_000)
        layer = make_layer([file("payload.bin", payload)], compression="none")
        del payload
        image = make_image([layer])
        tiny = make_image([make_layer([file("tiny", b"tiny\n")], compression="none")])
        with start_registry(work / "registry") as registry:
            push(registry, REPOSITORY, TAG, image)
            push(registry, TINY, TAG, tiny)
            print(f"registry {registry.host}, layer {layer.digest} ({layer.size:,} bytes,"
                  f" plain tar of random bytes)")
            ours, theirs, fixed = [], [], []
            for run in range(1, args.runs + 1):
                ours.append(time_ours(registry.host, layer.digest, layer.size, work))
                theirs.append(time_skopeo(registry.host, work))
                fixed.append(time_skopeo(registry.host, work, TINY))
                print(f"run {run}: BlobCache.fetch {ours[-1]:.3f} s, skopeo copy"
                      f" {theirs[-1]:.3f} s")
    mb = layer.size / 1e6
    ours_rate = mb / statistics.median(ours)
    theirs_rate = mb / statistics.median(theirs)
    print(f"median of {args.runs}: BlobCache.fetch {ours_rate:.0f} MB/s,"
          f" skopeo copy {theirs_rate:.0f} MB/s, ratio ours/skopeo {ours_rate / theirs_rate:.2f}")
    print(f"skopeo copy of a tiny image (its fixed cost): {statistics.median(fixed):.3f} s;"
          f" skopeo without it: {mb / (statistics.median(theirs) - statistics.median(fixed)):.0f}"
          " MB/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
