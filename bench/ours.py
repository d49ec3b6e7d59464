"""Our side: the pipeline exactly as a user runs it, ``doit`` on an images.toml.

Each build directory gets an ``images.toml`` naming images on the loopback
registry (plain HTTP is the default there, so no ``[registries]`` table)
and is built with::

    <venv>/bin/doit -f <repo>/dodo.py -d <dir>

with the default settings: ``jobs`` (doit's ``-n``) from the default config,
cache and outputs under ``<dir>``. A cold run starts from an empty
directory. The pipeline's JSON log lines (it logs JSON when stderr is not a
terminal) are kept per run and summarised: seconds per task family and how
many tasks ran, which is what says where our time went.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .procmon import measure
from .world import World, WorldImage

__all__ = ["OursRun", "Ours", "write_manifest"]

_REPO_ROOT = Path(__file__).resolve().parents[1]
_FAMILIES = ("resolve", "remote", "fetch-blob", "unpack", "flatten", "mkfs")


@dataclass(slots=True)
class OursRun:
    seconds: float
    peak_rss: int
    peak_pss: int
    tasks_ran: int | None = None
    tasks_up_to_date: int | None = None
    steps: dict[str, float] = field(default_factory=dict)
    """Seconds per task family, summed over tasks (they overlap with -n > 1)."""
    outputs: list[Path] = field(default_factory=list)


def write_manifest(directory: Path, world: World, images: Sequence[WorldImage], *,
                   extra: str = "") -> None:
    """Write ``directory/images.toml`` building ``images`` from the world's registry, each
    with the TOML lines ``extra``."""
    lines = ["# Written by bench/run.py.", ""]
    for image in images:
        lines += [f"[images.{image.name}]", f'ref = "{world.ref(image)}"', extra]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "images.toml").write_text("\n".join(lines))


def _summarise(log: Path, run: OursRun, start_offset: int) -> None:
    with open(log, "rb") as f:
        f.seek(start_offset)
        for raw in f:
            if not raw.startswith(b"{"):
                continue
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            if event.get("event") == "task.done" and "seconds" in event:
                family = str(event.get("task", "")).split(":", 1)[0]
                if family in _FAMILIES:
                    run.steps[family] = round(run.steps.get(family, 0.0) + event["seconds"], 3)
            elif event.get("event") == "run.finished":
                run.tasks_ran = event.get("ran")
                run.tasks_up_to_date = event.get("up_to_date")


class Ours:
    """Runs doit on build directories; one log file per bench run."""

    def __init__(self, world: World, log_dir: Path, *, checkout: Path | None = None) -> None:
        """``checkout``: build with another checkout of the project (its dodo.py and the
        doit of its own ``.venv``) instead of this one with the bench's venv."""
        self.world = world
        self.log = log_dir / "ours.log"
        self.root = _REPO_ROOT if checkout is None else checkout
        self.doit = (Path(sys.executable).parent if checkout is None
                     else checkout / ".venv" / "bin") / "doit"
        if not self.doit.exists():
            raise RuntimeError(f"{self.doit} is missing: install the package into the venv "
                               f"that runs it (pip install -e {self.root})")

    def build(self, directory: Path, *, profile: Path | None = None,
              command: Sequence[str] = (), env: Mapping[str, str] | None = None,
              args: Sequence[str] = ()) -> OursRun:
        """Run doit in ``directory`` (its images.toml must exist); ``command`` is what
        comes first on doit's command line (e.g. ``["list"]``), nothing for a build;
        ``env`` adds variables (the remote cache's); ``args`` come last (``shard=1/2``)."""
        argv = [str(self.doit), *command, "-f", str(self.root / "dodo.py"), "-d",
                str(directory), *args]
        if profile is not None:
            # --idle: waits (on mkfs.ext4, locks, the network) are most of a
            # pipeline's wall time and must show where they happen.
            argv = [str(self.doit.parent / "py-spy"), "record", "--subprocesses", "--idle",
                    "--format", "speedscope", "--rate", "200", "-o", str(profile), "--",
                    *argv]
        start = self.log.stat().st_size if self.log.exists() else 0
        extra, env = env or {}, dict(os.environ)
        env.pop("ROOTFS_MIRRORS", None)
        for name in ("ROOTFS_REMOTE_CACHE", "ROOTFS_REMOTE_CACHE_PUSH"):
            env.pop(name, None)
        env.update(extra)
        # Users run with cached bytecode (pip compiles it at install); a host
        # that forbids writing .pyc files would time the compiler instead.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        m = measure(argv, env=env, log=self.log)
        if m.returncode != 0:
            raise RuntimeError(f"ours: doit exited {m.returncode} in {directory}; "
                               f"see {self.log}")
        run = OursRun(m.seconds, m.peak_rss, m.peak_pss)
        _summarise(self.log, run, start)
        out = directory / "out"
        run.outputs = sorted(out.glob("*.ext4")) if out.is_dir() else []
        return run
