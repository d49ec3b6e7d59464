"""The scenarios of issue 4, each run for us and for the peer in the same bench run.

====  ==============================================  ===================================
id    what is timed (ours: one ``doit`` run)           peer
====  ==============================================  ===================================
1     cold build of ``app00`` (fresh cache)            fresh OCI layout; plus the floor
2     cold batch ``app00``-``app09`` (shared base)     one fresh layout for the batch
3     no-op rerun of the batch                         the same script again (warm layout)
4     ``app00`` bumped ``v1`` -> ``v2`` (new top)      copy + unpack + mkfs of app00:v2
5     ``big`` (~1 GiB uncompressed, fresh cache)       fresh layout
L     ``layers`` (4 layers, whiteouts, opaque dirs)    fresh layout (no target: a check)
R     a fresh directory getting the batch from a       our own cold local build of the
      warm remote cache (the world's registry)         batch (floor column: the cold build
                                                       that pushed, which warmed the cache)
====  ==============================================  ===================================

Within one bench run the order is fixed (peer, floor, ours per scenario) and
scenarios 3 and 4 continue in scenario 2's directories, so 3 needs 2 and 4
needs 2 and 1 (its target is against 1). Directories of a finished scenario
are removed at once to keep the disk footprint to one scenario's worth, and
``sync`` runs (untimed) before each side, the floor included, so none pays
to write back another's dirty pages.
After each build the ext4 outputs of both sides are compared by used
inode count, so a side that silently skipped work shows up.
"""

from __future__ import annotations

import os
import shutil
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ours import Ours, OursRun, write_manifest
from .peer import Peer, PeerRun
from .world import World, WorldImage

__all__ = ["SCENARIOS", "Sample", "Samples", "Bench", "with_dependencies", "ext4_inodes_used"]

SCENARIOS = ("1", "2", "3", "4", "5", "layers", "remote")
_NEEDS = {"3": ("2",), "4": ("2", "1")}


def with_dependencies(selected: Sequence[str]) -> list[str]:
    """``selected`` plus the scenarios they continue from, in canonical order."""
    wanted = set(selected)
    for sid in list(wanted):
        wanted.update(_NEEDS.get(sid, ()))
    return [sid for sid in SCENARIOS if sid in wanted]


@dataclass(frozen=True, slots=True)
class Sample:
    """One side of one scenario in one run."""

    seconds: float
    peak_rss: int
    peak_pss: int
    steps: dict[str, float]
    tasks_ran: int | None = None

    @classmethod
    def of(cls, run: OursRun | PeerRun) -> Sample:
        ran = run.tasks_ran if isinstance(run, OursRun) else None
        return cls(round(run.seconds, 3), run.peak_rss, run.peak_pss, dict(run.steps), ran)

    def to_json(self) -> dict[str, object]:
        return {"seconds": self.seconds, "peak_rss": self.peak_rss, "peak_pss": self.peak_pss,
                "steps": self.steps, "tasks_ran": self.tasks_ran}


@dataclass(slots=True)
class Samples:
    """Every run's samples of one scenario, and the output checks."""

    ours: list[Sample] = field(default_factory=list)
    peer: list[Sample] = field(default_factory=list)
    floor: list[Sample] = field(default_factory=list)
    checked_floor: list[Sample] = field(default_factory=list)
    """The floor plus our checks and cache writes (``Peer.floor(checked=True)``): shown,
    not a target."""
    checks: list[dict[str, object]] = field(default_factory=list)

    @staticmethod
    def median(samples: list[Sample]) -> float | None:
        return statistics.median(s.seconds for s in samples) if samples else None

    @staticmethod
    def peak(samples: list[Sample], attr: str = "peak_rss") -> int | None:
        return max(getattr(s, attr) for s in samples) if samples else None

    @staticmethod
    def median_steps(samples: list[Sample]) -> dict[str, float]:
        keys = sorted({k for s in samples for k in s.steps})
        return {k: round(statistics.median(s.steps.get(k, 0.0) for s in samples), 3)
                for k in keys}

    def to_json(self) -> dict[str, object]:
        return {"ours": [s.to_json() for s in self.ours],
                "peer": [s.to_json() for s in self.peer],
                "floor": [s.to_json() for s in self.floor],
                "checked_floor": [s.to_json() for s in self.checked_floor],
                "checks": self.checks}


def ext4_inodes_used(image: Path) -> int:
    """Inodes in use, from the primary superblock (s_inodes_count - s_free_inodes_count)."""
    with open(image, "rb") as f:
        f.seek(1024)
        sb = f.read(20)
    inodes, _, _, _, free_inodes = struct.unpack("<5I", sb)
    return int(inodes - free_inodes)


class Bench:
    """Runs the selected scenarios once per call to :meth:`run`, appending samples."""

    def __init__(self, world: World, run_root: Path, log_dir: Path,
                 log: Callable[[str], None], *, builder: str = "native") -> None:
        self.world = world
        # Every image of our side names the ext4 builder (images.toml `builder`).
        self.extra = f'builder = "{builder}"\n'
        self.builder = builder
        self.run_root = run_root
        self.log_dir = log_dir
        self.say = log
        self.ours = Ours(world, log_dir)
        self.results: dict[str, Samples] = {}

    def _samples(self, sid: str) -> Samples:
        return self.results.setdefault(sid, Samples())

    def _check(self, sid: str, ours: OursRun, peer: PeerRun) -> None:
        pairs = {p.stem: p for p in peer.outputs}
        for mine in ours.outputs:
            theirs = pairs.get(mine.stem)
            if theirs is None:
                continue
            check = {"image": mine.stem, "ours_inodes": ext4_inodes_used(mine),
                     "peer_inodes": ext4_inodes_used(theirs)}
            self._samples(sid).checks.append(check)
            if check["ours_inodes"] != check["peer_inodes"]:
                self.say(f"  warning: {mine.stem}: ours uses {check['ours_inodes']} inodes, "
                         f"the peer {check['peer_inodes']}")

    def _side_by_side(self, sid: str, title: str, peer: Peer, images: Sequence[WorldImage],
                      ours_dir: Path, *, floor: bool = False) -> tuple[PeerRun, OursRun]:
        # Each side starts with no dirty pages left by the other to write back.
        os.sync()
        p = peer.build(images)
        self._samples(sid).peer.append(Sample.of(p))
        line = f"  [{sid}] {title}: peer {p.seconds:.2f} s"
        if floor:
            os.sync()
            f = peer.floor(images[0], self.run_root)
            self._samples(sid).floor.append(Sample.of(f))
            os.sync()
            c = peer.floor(images[0], self.run_root, checked=True)
            self._samples(sid).checked_floor.append(Sample.of(c))
            line += f", floor {f.seconds:.2f} s (checked {c.seconds:.2f} s)"
        os.sync()
        o = self.ours.build(ours_dir)
        self._samples(sid).ours.append(Sample.of(o))
        self.say(f"{line}, ours {o.seconds:.2f} s (ratio {o.seconds / p.seconds:.2f})")
        self._check(sid, o, p)
        return p, o

    def run(self, index: int, selected: Sequence[str]) -> None:
        w = self.world
        root = self.run_root / f"run{index}"
        app00 = w.image("app00")
        if "1" in selected:
            d = root / "s1"
            write_manifest(d / "ours", w, [app00], extra=self.extra)
            self._side_by_side("1", "cold single", Peer(w, d / "peer", self.log_dir),
                               [app00], d / "ours", floor=True)
            shutil.rmtree(d)
        if "2" in selected:
            d = root / "s2"
            peer = Peer(w, d / "peer", self.log_dir)
            write_manifest(d / "ours", w, w.batch, extra=self.extra)
            self._side_by_side("2", f"cold batch of {len(w.batch)}", peer, w.batch, d / "ours")
            if "3" in selected:
                _, o = self._side_by_side("3", "no-op rerun", peer, w.batch, d / "ours")
                if o.tasks_ran:
                    self.say(f"  warning: the no-op rerun ran {o.tasks_ran} tasks")
            if "4" in selected:
                bumped = w.image("app00", "v2")
                write_manifest(d / "ours", w, [bumped, *w.batch[1:]], extra=self.extra)
                self._side_by_side("4", "tag bump app00 v1->v2", peer, [bumped], d / "ours")
            shutil.rmtree(d)
        for sid, image, title in (("5", w.image("big"), "1 GiB image"),
                                  ("layers", w.image("layers"), "multi-layer whiteouts")):
            if sid in selected:
                d = root / f"s{sid}"
                write_manifest(d / "ours", w, [image], extra=self.extra)
                self._side_by_side(sid, title, Peer(w, d / "peer", self.log_dir), [image],
                                   d / "ours")
                shutil.rmtree(d)
        if "remote" in selected:
            self._remote(root / "sremote", index)
        shutil.rmtree(root, ignore_errors=True)

    def _remote(self, d: Path, index: int) -> None:
        """Scenario R: cold local batch, then a cold batch pushing to a cache repository of
        the world's registry (new per run: a cold cache), then a fresh directory from it."""
        w, samples = self.world, self._samples("remote")
        assert w.registry is not None, "internal error: the world's registry is not running"
        # A cache repository new to this run and builder: each pass starts from a cold cache.
        env = {"ROOTFS_REMOTE_CACHE": f"{w.registry.host}/bench/rootfs-cache-{os.getpid()}-"
                                      f"{index}-{self.builder}", "ROOTFS_REMOTE_CACHE_PUSH": "1"}
        for name in ("local", "push", "fetch"):
            write_manifest(d / name, w, w.batch, extra=self.extra)
        os.sync()
        cold = self.ours.build(d / "local")
        samples.peer.append(Sample.of(cold))
        shards = self._two_shards(d, d / "local/images.lock.json", env, index)
        shutil.rmtree(d / "local")
        os.sync()
        pushed = self.ours.build(d / "push", env=env)
        samples.floor.append(Sample.of(pushed))
        # The fresh directory has the lock file a runner would have checked out.
        shutil.copy(d / "push/images.lock.json", d / "fetch/images.lock.json")
        os.sync()
        fetched = self.ours.build(d / "fetch", env=env)
        samples.ours.append(Sample.of(fetched))
        self.say(f"  [R] batch of {len(w.batch)}: cold local {cold.seconds:.2f} s, cold + push "
                 f"{pushed.seconds:.2f} s, fresh directory from the cache "
                 f"{fetched.seconds:.2f} s (ratio {fetched.seconds / cold.seconds:.2f}); "
                 f"two concurrent shards (shard=1/2, 2/2, pushing to a cold cache of their "
                 f"own) {shards:.2f} s wall (ratio {shards / cold.seconds:.2f})")
        samples.checks.append({"two_shards_seconds": round(shards, 3),
                               "cold_local_seconds": round(cold.seconds, 3)})
        for mine, theirs in zip(fetched.outputs, pushed.outputs, strict=True):
            same = _same_bytes(mine, theirs)
            samples.checks.append({"image": mine.stem, "identical": same})
            if not same:
                self.say(f"  warning: {mine.stem}: the cached image differs from the build")
        shutil.rmtree(d)


    def _two_shards(self, d: Path, lock: Path, env: dict[str, str], index: int) -> float:
        """Wall time of shard=1/2 and shard=2/2 run at once in two directories (two runners
        of one CI fan-out on this one machine), each pushing to a cache repository new to
        this run: the pair builds the batch once between them."""
        import threading

        w = self.world
        mine = {**env, "ROOTFS_REMOTE_CACHE": env["ROOTFS_REMOTE_CACHE"] + "-shards"}
        dirs = [d / f"shard{k}" for k in (1, 2)]
        for directory in dirs:
            write_manifest(directory, w, w.batch, extra=self.extra)
            shutil.copy(lock, directory / "images.lock.json")
        os.sync()
        errors: list[BaseException] = []

        def one(k: int) -> None:
            try:
                self.ours.build(dirs[k - 1], command=(), env=mine,
                                args=(f"shard={k}/2",))
            except BaseException as err:  # noqa: BLE001  (re-raised below, in this thread)
                errors.append(err)

        started = time.monotonic()
        threads = [threading.Thread(target=one, args=(k,)) for k in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
        if errors:
            raise errors[0]
        for directory in dirs:
            shutil.rmtree(directory)
        return wall


def _same_bytes(a: Path, b: Path) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
