"""Issue 3, test 7: our flat image against ``umoci unpack`` of the same image.

A Debian-like two-layer image (harness ``debian_like``: usr-merge symlinks,
setuid/setgid binaries, a ``security.capability`` xattr, devices, a fifo,
hard links within and across layers, whiteouts, an opaque directory) is
pushed to the real registry. We pull it with our client and flatten it;
``skopeo copy`` puts the same image into an OCI layout and ``umoci unpack``
(as root, so owners, modes, devices and xattrs are real) makes a bundle. The
two trees are compared entry by entry: type, mode, owner, size, content hash,
link target, xattrs, device numbers, mtime and hard-link identity.

Both sides run from local files as separate processes under GNU time (our
unpack of every layer + flatten + materialise, against ``umoci unpack``); the
test prints wall time and peak RSS (run with ``-s`` to see them) and asserts
nothing about them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.flat.image import FileType, chain_key, read_entries
from pipeline.oci.platform import parse_platform
from pipeline.oci.reference import parse_reference
from pipeline.registry.blobcache import BlobCache
from pipeline.registry.client import RegistryClient
from pipeline.registry.resolve import resolve_image
from tests.harness.debian import debian_like
from tests.harness.images import make_image
from tests.harness.push import push
from tests.harness.registry import Registry

pytestmark = [
    # End to end with real tools: seconds per test (the fast loop skips them).
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="umoci unpack needs root for real owners"),
    pytest.mark.skipif(not (shutil.which("umoci") and shutil.which("skopeo")),
                       reason="umoci and skopeo are needed (scripts/test.sh installs them)"),
]
ROOT = Path(__file__).resolve().parents[2]
# xattrs the host filesystem may add on its own; never part of an image.
HOST_XATTRS = frozenset({"security.selinux"})
_TYPES = {stat.S_IFDIR: "d", stat.S_IFREG: "f", stat.S_IFLNK: "l", stat.S_IFCHR: "c",
          stat.S_IFBLK: "b", stat.S_IFIFO: "p"}

Row = tuple[str, int, int, int, int, str, str, tuple[tuple[str, str], ...], str, int]
"""type, mode, uid, gid, size, sha256, link target, xattrs, rdev, mtime_ns"""

# Our side of the timing, run as a child process from blob files already on disk.
CHILD = """
import json, sys
from dataclasses import dataclass
from pathlib import Path
from pipeline.base.digest import Digest, parse_digest
from pipeline.flat.staging import flatten_image
from pipeline.layers.unpack import unpack_layer

@dataclass(frozen=True)
class Layer:
    digest: Digest
    size: int
    media_type: str
    diff_id: Digest

args = json.loads(sys.argv[1])
stores = [unpack_layer(Path(blob), Layer(parse_digest(d), size, mt, parse_digest(diff)),
                       Path(args["layers"]))
          for blob, d, size, mt, diff in args["blobs"]]
print(flatten_image(stores, Path(args["flat"])))
"""


def measure(argv: list[str], **kw: object) -> tuple[float, int]:
    """Run ``argv`` under GNU time: wall seconds and peak RSS in KiB of that process.

    GNU time forks the command from a small process, so the peak RSS is the
    command's own (a child forked from pytest would report pytest's size).
    """
    report = Path(os.environ.get("TMPDIR", "/tmp")) / f"time-{os.getpid()}-{time.monotonic_ns()}"
    try:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", str(report), *argv],
                              capture_output=True, text=True, **kw)  # type: ignore[call-overload]
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
        wall, rss = report.read_text().split()[-2:]
    finally:
        report.unlink(missing_ok=True)
    return float(wall), int(rss)


def row(path: Path, st: os.stat_result, data_path: Path | None = None) -> Row:
    kind = _TYPES[stat.S_IFMT(st.st_mode)]
    digest, target, rdev, size = "", "", "", 0
    if kind == "f":
        digest = hashlib.sha256((data_path or path).read_bytes()).hexdigest()
        size = st.st_size
    elif kind == "l":
        target = os.readlink(path)
    elif kind in "cb":
        rdev = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    xattrs = tuple(sorted((k, os.getxattr(path, k, follow_symlinks=False).hex())
                          for k in os.listxattr(path, follow_symlinks=False)
                          if k not in HOST_XATTRS))
    return (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, size, digest, target,
            xattrs, rdev, st.st_mtime_ns)


def umoci_tree(rootfs: Path) -> tuple[dict[str, Row], set[frozenset[str]]]:
    rows = {"": row(rootfs, rootfs.lstat())}
    inodes: dict[int, set[str]] = {}
    for dirpath, dirnames, filenames in os.walk(rootfs):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = os.fsdecode(os.fsencode(path.relative_to(rootfs)))
            st = path.lstat()
            rows[rel] = row(path, st)
            if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                inodes.setdefault(st.st_ino, set()).add(rel)
    return rows, {frozenset(v) for v in inodes.values()}


def our_tree(flat: Path) -> tuple[dict[str, Row], set[frozenset[str]]]:
    rows: dict[str, Row] = {}
    groups: dict[int, set[str]] = {}
    for e in read_entries(flat / "entries.jsonl"):
        digest, size = "", 0
        if e.type is FileType.REGULAR:
            data = (flat / "rootfs" / e.path).read_bytes()
            digest, size = hashlib.sha256(data).hexdigest(), len(data)
            assert size == e.size
        rows[e.path] = (e.type.value, e.mode, e.uid, e.gid, size, digest, e.target or "",
                        tuple(sorted((k, v.hex()) for k, v in e.xattrs)),
                        f"{e.rdev[0]},{e.rdev[1]}" if e.rdev else "", e.mtime_ns)
        if e.link_group is not None:
            groups.setdefault(e.link_group, set()).add(e.path)
    return rows, {frozenset(v) for v in groups.values()}


def pull_both(tmp_path: Path, registry: Registry, repo: str, client: RegistryClient, *,
              files: int, size: int) -> tuple[Path, Path, str]:
    """Our flat image and umoci's rootfs of one pushed image, and how long each took.

    Blobs come through our client (resolve + BlobCache) and through skopeo;
    then both sides run from local files as separate processes, timed alike.
    """
    debian = debian_like(files=files, size=size)
    push(registry, repo, "v1", make_image(list(debian.layers("gzip"))))
    ref = parse_reference(f"{registry.host}/{repo}:v1")
    blobs = BlobCache(tmp_path / "blobs")
    resolved = resolve_image(client, ref, parse_platform("linux/amd64"), blobs)
    for layer in resolved.layers:
        blobs.fetch(client, ref.registry, ref.repository, layer.digest, layer.size)
    layout = tmp_path / "oci-layout"
    subprocess.run(["skopeo", "--insecure-policy", "copy", "--quiet", "--src-tls-verify=false",
                    f"docker://{registry.host}/{repo}:v1", f"oci:{layout}:v1"],
                   check=True, capture_output=True)
    args = {"layers": str(tmp_path / "layers"), "flat": str(tmp_path / "flat"),
            "blobs": [[str(blobs.path(layer.digest)), str(layer.digest), layer.size,
                       layer.media_type, str(layer.diff_id)] for layer in resolved.layers]}
    ours = measure([sys.executable, "-c", CHILD, json.dumps(args)], cwd=ROOT)
    theirs = measure(["umoci", "unpack", "--image", f"{layout}:v1", str(tmp_path / "bundle")])
    flat = tmp_path / "flat" / chain_key([str(layer.digest) for layer in resolved.layers])
    timing = (f"{sum(layer.size for layer in resolved.layers)} compressed bytes in"
              f" {len(resolved.layers)} layers; ours (unpack + flatten + materialise):"
              f" {ours[0]:.2f} s, {ours[1] / 1024:.1f} MiB peak RSS; umoci unpack:"
              f" {theirs[0]:.2f} s, {theirs[1] / 1024:.1f} MiB peak RSS")
    return flat, tmp_path / "bundle" / "rootfs", timing


def compare(flat: Path, rootfs: Path) -> int:
    ours, our_links = our_tree(flat)
    theirs, their_links = umoci_tree(rootfs)
    diffs = [(p, ours.get(p), theirs.get(p)) for p in sorted(ours.keys() | theirs.keys())
             if ours.get(p) != theirs.get(p)]
    assert not diffs, "\n".join(f"{p!r}:\n  ours  {o}\n  umoci {t}" for p, o, t in diffs[:20])
    assert our_links == their_links
    return len(ours)


def test_debian_like_matches_umoci(tmp_path: Path, registry: Registry, repo: str,
                                   client: RegistryClient) -> None:
    flat, rootfs, timing = pull_both(tmp_path, registry, repo, client, files=3000,
                                     size=4 << 20)
    entries = compare(flat, rootfs)
    assert entries > 2900
    print(f"\n[test 7] {entries} entries, {timing}")


def test_large_debian_like_matches_umoci(tmp_path: Path, registry: Registry, repo: str,
                                         client: RegistryClient) -> None:
    """The largest test image: ~30 000 files, ~200 MiB; also the timing we report."""
    flat, rootfs, timing = pull_both(tmp_path, registry, repo, client, files=30_000,
                                     size=200 << 20)
    entries = compare(flat, rootfs)
    assert entries > 29_000
    print(f"\n[test 7, large] {entries} entries, {timing}")
