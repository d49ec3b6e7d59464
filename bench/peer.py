"""The usual alternative, per image, and the floor of what any tool must spend.

Peer, one image after another (a shell loop is what people write)::

    skopeo copy --src-tls-verify=false docker://<registry>/<repo>:<tag> oci:<layout>:<tag>
    umoci unpack --image <layout>:<tag> <bundle>          # as root: owners, devices, xattrs
    mkfs.ext4 -d <bundle>/rootfs <image> <blocks>         # sized like ours, see below

All images of a batch share one OCI layout, so skopeo stores the shared base
blob once and skips blobs the layout already has, as it does for a user.
The ext4 size is chosen exactly as ours is: the pipeline's own planner
(``pipeline.ext4.size``) on a walk of the extracted tree, 20 % / 64 MiB
headroom; mkfs.ext4 gets the same ``-b``, ``-I``, ``-N``, ``-m``, ``-J size``
and ``-E root_owner,lazy_itable_init=0,lazy_journal_init=0,nodiscard`` as
ours, with the host's mke2fs.conf (Debian 12's ext4 features). The walk is
timed as part of the peer. What the peer does not do and we do: the debugfs
ownership pass (umoci as root wrote real owners), e2fsck, hashing the image.

Floor (scenario 1): inflating the image's layer blobs to nothing with ISA-L
(``isal_zlib``, what pipeline.layers.compression uses) plus ``mkfs.ext4 -d`` with the
same options on the tree the peer already extracted. Nothing can build the
image faster without skipping one of those two.

Checked floor (scenario 1, shown beside the floor, not a target): the floor
plus what a cold build of ours also does with the same bytes, one step after
the other on one thread: the blob's and the uncompressed stream's sha256
(digest and diff_id), both written to files and fsynced (the blob cache and
the layer's pack), and the sha256 of the finished image (out/<name>.json).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from isal import isal_zlib

from pipeline.base.units import DEFAULT_HEADROOM
from pipeline.ext4.output import sha256_sparse
from pipeline.ext4.size import BLOCK_SIZE, SizePlan, measure_tree, plan_size
from pipeline.flat.image import FileType, FlatEntry

from .procmon import Measurement, measure
from .world import Log, World, WorldImage

__all__ = ["PeerRun", "Peer", "plan_for_tree", "mkfs_argv", "inflate_seconds",
           "PEER_PACKAGES", "ensure_peer_tools"]

PEER_PACKAGES = {"skopeo": "skopeo", "umoci": "umoci", "mkfs.ext4": "e2fsprogs"}
_INFLATE_CHUNK = 1 << 20
_TYPES = {stat.S_IFREG: FileType.REGULAR, stat.S_IFDIR: FileType.DIRECTORY,
          stat.S_IFLNK: FileType.SYMLINK, stat.S_IFCHR: FileType.CHAR,
          stat.S_IFBLK: FileType.BLOCK, stat.S_IFIFO: FileType.FIFO}


def ensure_peer_tools(log: Log) -> None:
    """Install the peer's Debian packages when a tool is missing (the host is Debian)."""
    missing = sorted({pkg for tool, pkg in PEER_PACKAGES.items() if shutil.which(tool) is None})
    if not missing:
        return
    log(f"peer: installing {' '.join(missing)} with apt-get")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *missing], check=True, env=env)


@dataclass(slots=True)
class PeerRun:
    """Time and memory of one peer pass over one or more images."""

    seconds: float = 0.0
    peak_rss: int = 0
    peak_pss: int = 0
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds per step summed over images: copy, unpack, plan, mkfs."""
    outputs: list[Path] = field(default_factory=list)

    def add(self, step: str, m: Measurement) -> None:
        self.add_seconds(step, m.seconds)
        self.peak_rss = max(self.peak_rss, m.peak_rss)
        self.peak_pss = max(self.peak_pss, m.peak_pss)

    def add_seconds(self, step: str, seconds: float) -> None:
        self.seconds += seconds
        self.steps[step] = round(self.steps.get(step, 0.0) + seconds, 3)


def _entries(rootfs: Path) -> list[FlatEntry]:
    """The extracted tree as flat entries, parents first, children in byte order."""
    out: list[FlatEntry] = []
    groups: dict[tuple[int, int], int] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        path = os.path.join(rootfs, rel) if rel else str(rootfs)
        st = os.lstat(path)
        kind = _TYPES[stat.S_IFMT(st.st_mode)]
        group = None
        if kind is FileType.REGULAR and st.st_nlink > 1:
            group = groups.setdefault((st.st_dev, st.st_ino), len(groups))
        xattrs = tuple(sorted((n, os.getxattr(path, n, follow_symlinks=False))
                              for n in os.listxattr(path, follow_symlinks=False)))
        out.append(FlatEntry(rel, kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                             st.st_mtime_ns, xattrs,
                             st.st_size if kind is FileType.REGULAR else 0,
                             os.readlink(path) if kind is FileType.SYMLINK else None,
                             link_group=group))
        if kind is FileType.DIRECTORY:
            names = sorted(os.listdir(path), key=os.fsencode, reverse=True)
            stack += [f"{rel}/{n}" if rel else n for n in names]
    return out


def plan_for_tree(rootfs: Path) -> SizePlan:
    """Size an image for ``rootfs`` exactly as the pipeline sizes an auto-sized image."""
    usage = measure_tree(_entries(rootfs), inode_size=256, csum=True)
    return plan_size(usage, size=None, headroom=DEFAULT_HEADROOM, inode_size=256, journal=True,
                     reserved_percent=0.0, desc_size=64, resize_inode=True, sparse_super=True)


def mkfs_argv(rootfs: Path, image: Path, plan: SizePlan) -> list[str]:
    journal_mib = plan.layout.journal_blocks * BLOCK_SIZE // (1 << 20)
    return ["mkfs.ext4", "-F", "-q", "-t", "ext4", "-b", str(BLOCK_SIZE), "-I", "256",
            "-N", str(plan.layout.inodes), "-m", "0", "-J", f"size={journal_mib}",
            "-E", "root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard",
            "-d", str(rootfs), str(image), str(plan.layout.blocks)]


def inflate_seconds(blobs: Iterable[Path]) -> float:
    """Seconds to gunzip ``blobs`` to nothing with ISA-L, in 1 MiB reads."""
    started = time.monotonic()
    for path in blobs:
        with open(path, "rb") as f:
            d = isal_zlib.decompressobj(31)
            while chunk := f.read(_INFLATE_CHUNK):
                d.decompress(chunk)
            d.flush()
    return time.monotonic() - started


def checked_inflate_seconds(blobs: Iterable[Path], scratch: Path) -> float:
    """``inflate_seconds`` plus, for each blob, the sha256 of it and of its uncompressed
    stream, and both written to files in ``scratch`` and fsynced (removed after)."""
    started = time.monotonic()
    for path in blobs:
        copy, stream = scratch / "floor-blob", scratch / "floor-stream"
        with open(path, "rb") as f, open(copy, "wb") as b, open(stream, "wb") as s:
            blob_hash, stream_hash = hashlib.sha256(), hashlib.sha256()
            d = isal_zlib.decompressobj(31)
            while chunk := f.read(_INFLATE_CHUNK):
                blob_hash.update(chunk)
                b.write(chunk)
                out = d.decompress(chunk)
                stream_hash.update(out)
                s.write(out)
            out = d.flush()
            stream_hash.update(out)
            s.write(out)
            for written in (b, s):
                written.flush()
                os.fsync(written.fileno())
        copy.unlink()
        stream.unlink()
    return time.monotonic() - started


class Peer:
    """skopeo + umoci + mkfs.ext4 over one work directory."""

    def __init__(self, world: World, work: Path, log_dir: Path) -> None:
        self.world = world
        self.work = work
        self.layout = work / "oci"
        self.bundles = work / "bundles"
        self.out = work / "out"
        self.log = log_dir / "peer.log"
        for d in (self.bundles, self.out):
            d.mkdir(parents=True, exist_ok=True)

    def bundle(self, image: WorldImage) -> Path:
        return self.bundles / image.name

    def output(self, image: WorldImage) -> Path:
        return self.out / f"{image.name}.ext4"

    def _run(self, run: PeerRun, step: str, argv: Sequence[str]) -> None:
        m = measure(argv, log=self.log)
        if m.returncode != 0:
            raise RuntimeError(f"peer: {argv[0]} exited {m.returncode}; see {self.log}")
        run.add(step, m)

    def build(self, images: Sequence[WorldImage]) -> PeerRun:
        """Copy, unpack and mkfs each image in turn; a bundle left from before is replaced."""
        run = PeerRun()
        for image in images:
            tag = f"{image.name}-{image.tag}"
            self._run(run, "copy", ["skopeo", "copy", "-q", "--src-tls-verify=false",
                                    f"docker://{self.world.ref(image)}",
                                    f"oci:{self.layout}:{tag}"])
            bundle = self.bundle(image)
            started = time.monotonic()
            shutil.rmtree(bundle, ignore_errors=True)
            run.add_seconds("unpack", time.monotonic() - started)
            self._run(run, "unpack", ["umoci", "unpack", "--image", f"{self.layout}:{tag}",
                                      str(bundle)])
            started = time.monotonic()
            plan = plan_for_tree(bundle / "rootfs")
            run.add_seconds("plan", time.monotonic() - started)
            output = self.output(image)
            output.unlink(missing_ok=True)
            self._run(run, "mkfs", mkfs_argv(bundle / "rootfs", output, plan))
            run.outputs.append(output)
        return run

    def floor(self, image: WorldImage, scratch: Path, *, checked: bool = False) -> PeerRun:
        """Inflate ``image``'s blobs, then mkfs.ext4 -d its already extracted tree; with
        ``checked``, the inflate also hashes and writes (``checked_inflate_seconds``) and
        the image is hashed once made, as ours hashes it (``sha256_sparse``)."""
        run = PeerRun()
        blobs = (self.world.blob_path(layer) for layer in image.layers)
        if checked:
            run.add_seconds("inflate+check+write", checked_inflate_seconds(blobs, scratch))
        else:
            run.add_seconds("inflate", inflate_seconds(blobs))
        rootfs = self.bundle(image) / "rootfs"
        if not rootfs.is_dir():
            raise RuntimeError(f"internal error: floor needs the peer's tree at {rootfs}")
        output = scratch / f"floor-{image.name}.ext4"
        output.unlink(missing_ok=True)
        self._run(run, "mkfs", mkfs_argv(rootfs, output, plan_for_tree(rootfs)))
        if checked:
            started = time.monotonic()
            sha256_sparse(output)
            run.add_seconds("sha256", time.monotonic() - started)
        output.unlink()
        return run
