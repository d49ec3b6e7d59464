"""Run the real ``doit`` on a project directory and see what it did.

``run_doit`` starts ``doit -f <repo>/dodo.py -d <project> ...`` as a
subprocess of this interpreter with JSON logs, and returns what ran (the
reporter's ``task.done`` events), what failed, and, when asked, an audit
trail written by a Python audit hook inside the doit process: every file it
opened, every socket it connected and, at the end, every module it had
imported. That trail is how the tests prove a
no-op run reads no blob and makes no network request.

``ThrottleProxy`` is a TCP relay in front of the real registry that can slow
responses to a trickle: the one fault a real registry will not produce on
demand, needed to kill a run in the middle of a download.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.images import Layer, dir, file, make_image, make_layer
from tests.harness.push import push
from tests.harness.registry import Registry

REPO = Path(__file__).resolve().parents[2]
DODO = REPO / "dodo.py"

# Runs doit exactly as its console script does, with an audit hook first.
LAUNCHER = r"""
import os, sys
trail = os.environ.get("ROOTFS_TEST_AUDIT")
if trail:
    out = open(trail, "a", buffering=1)
    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            out.write("open " + os.fsdecode(args[0]) + "\n")
        elif event == "socket.connect":
            out.write("connect " + repr(args[1]) + "\n")
    sys.addaudithook(hook)
from doit.doit_cmd import DoitMain
code = DoitMain().run(sys.argv[1:])
if trail:
    out.write("".join(f"module {name}\n" for name in sorted(sys.modules)))
    import gc
    out.write(f"interpreter {gc.get_threshold()[0]} {sys.getswitchinterval()}"
              f" {gc.get_freeze_count()}\n")
sys.exit(code)
"""


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    audit: list[str] = field(default_factory=list)

    @property
    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.stderr.splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def tasks(self, event: str) -> list[str]:
        return [e["task"] for e in self.events if e.get("event") == event]

    @property
    def ran(self) -> list[str]:
        """Names of the tasks that ran and succeeded, in completion order."""
        return self.tasks("task.done")

    @property
    def failed(self) -> list[str]:
        return self.tasks("task.failed")

    def opened(self, under: Path) -> list[str]:
        prefix = str(under) + os.sep
        return [line[5:] for line in self.audit
                if line.startswith("open ") and line[5:].startswith(prefix)]

    @property
    def modules(self) -> list[str]:
        """Every module the doit process had imported when it finished (audit runs only)."""
        return [line[7:] for line in self.audit if line.startswith("module ")]

    @property
    def interpreter(self) -> tuple[int, float, int]:
        """The doit process's young-collection threshold, GIL switch interval and count of
        frozen objects when it finished (audit runs only)."""
        found = [line.split()[1:] for line in self.audit if line.startswith("interpreter ")]
        assert len(found) == 1, f"no interpreter line in the audit trail: {self.audit[-3:]}"
        threshold, interval, frozen = found[0]
        return int(threshold), float(interval), int(frozen)

    @property
    def connects(self) -> list[str]:
        """Network connections (address tuples); the Unix socket of the run's own worker
        pool (multiprocessing's forkserver) is not the network."""
        return [line[8:] for line in self.audit
                if line.startswith("connect ") and not line[8:].startswith(("'", '"', "b'"))]

    def check(self) -> Run:
        assert self.returncode == 0, f"doit {self.args} exited {self.returncode}:\n" \
            f"{self.stdout}\n{self.stderr[-4000:]}"
        return self


def doit_command(project: Path, *args: str, dodo: Path = DODO) -> list[str]:
    return [sys.executable, "-c", LAUNCHER, "-f", str(dodo), "-d", str(project), *args]


def doit_env(env: Mapping[str, str] | None = None, *,
             audit: Path | None = None) -> dict[str, str]:
    merged = {k: v for k, v in os.environ.items() if not k.startswith("ROOTFS_")}
    merged.update({"ROOTFS_LOG": "json", "PYTHONDONTWRITEBYTECODE": "1"})
    if audit is not None:
        merged["ROOTFS_TEST_AUDIT"] = str(audit)
    merged.update(env or {})
    return merged


def run_doit(project: Path, *args: str, env: Mapping[str, str] | None = None,
             audit: bool = False, timeout: float = 180, dodo: Path = DODO,
             command: list[str] | None = None) -> Run:
    trail = project.parent / f".audit-{time.monotonic_ns()}" if audit else None
    command = command or doit_command(project, *args, dodo=dodo)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=doit_env(env, audit=trail), cwd=project, check=False)
    lines = trail.read_text().splitlines() if trail is not None and trail.exists() else []
    if trail is not None:
        trail.unlink(missing_ok=True)
    return Run(list(args), proc.returncode, proc.stdout, proc.stderr, lines)


def run_rootfs(project: Path, *args: str, env: Mapping[str, str] | None = None,
               audit: bool = False) -> Run:
    """The ``rootfs`` command (``python -m pipeline``), no dodo file, in ``project``."""
    return run_doit(project, *args, env=env, audit=audit,
                    command=[sys.executable, "-m", "pipeline", *args])


def run_plain_doit(project: Path, *args: str) -> Run:
    """Plain ``doit`` in ``project`` (no -f, no -d), as a user types it."""
    return run_doit(project, *args, command=[sys.executable, "-c", LAUNCHER, *args])


def start_doit(project: Path, *args: str, env: Mapping[str, str] | None = None,
               log: Path) -> subprocess.Popen[bytes]:
    """doit in the background, in its own process group (so a kill takes its children)."""
    with open(log, "wb") as out:
        return subprocess.Popen(doit_command(project, *args), stdout=out, stderr=out,
                                env=doit_env(env), cwd=project, start_new_session=True)


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def wait_for(condition: Callable[[], bool], *, timeout: float = 60, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class ThrottleProxy:
    """A TCP relay to ``upstream`` (host:port); ``rate`` bytes/s per response when set."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream = (host, int(port))
        self.rate: int | None = None
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream)
        except OSError:
            client.close()
            return
        with client, server, contextlib.suppress(OSError):  # a killed peer resets
            pairs = {client: server, server: client}
            while not self._stop.is_set():
                readable, _, _ = select.select(list(pairs), [], [], 0.2)
                for sock in readable:
                    rate = self.rate if sock is server else None
                    data = sock.recv(min(rate, 65536) if rate else 65536)
                    if not data:
                        return
                    pairs[sock].sendall(data)
                    if rate:
                        time.sleep(len(data) / rate)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()


# A small world of images sharing a base layer ----------------------------------


@dataclass
class World:
    registry: Registry
    namespace: str
    project: Path
    base: Layer
    tops: dict[str, Layer] = field(default_factory=dict)
    host: str = ""
    builder: str = "native"
    """The ext4 builder every image of the manifest names."""

    def ref(self, name: str, tag: str = "v1") -> str:
        return f"{self.host or self.registry.host}/{self.namespace}/{name}:{tag}"

    def push(self, name: str, tag: str, top: Layer) -> None:
        push(self.registry, f"{self.namespace}/{name}", tag, make_image([self.base, top]))

    def write_manifest(self, extra: dict[str, str] | None = None, **refs: str) -> None:
        text = ""
        for name in sorted(self.tops):
            text += f'[images.{name}]\nref = "{refs.get(name, self.ref(name))}"\n'
            text += f'builder = "{self.builder}"\n'
            text += (extra or {}).get(name, "")
        (self.project / "images.toml").write_text(text)

    def blob(self, layer: Layer) -> Path:
        return self.project / ".cache/blobs/sha256" / layer.digest.split(":", 1)[1]


def top_layer(name: str, version: str = "1", size: int = 0) -> Layer:
    data = f"{name} {version}\n".encode() * 50 + (os.urandom(size) if size else b"")
    return make_layer([dir("etc"), file(f"etc/{name}-release", data)])


def make_world(registry: Registry, repo: str, tmp_path: Path, *, names: str = "abc",
               big: int = 0, host: str = "", builder: str = "native") -> World:
    base = make_layer([dir("etc"), file("etc/os-release", b"ID=base\n"), dir("bin"),
                       file("bin/sh", b"#!/bin/true\n", mode=0o755), dir("tmp", mode=0o1777)])
    world = World(registry, repo, tmp_path / "project", base, host=host, builder=builder)
    world.project.mkdir()
    for name in names:
        world.tops[name] = top_layer(name, size=big if name == names[0] else 0)
        world.push(name, "v1", world.tops[name])
    world.write_manifest()
    return world


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def verify_outputs(project: Path, names) -> None:  # type: ignore[no-untyped-def]
    """Each output exists, matches its record's sha256, checks clean, holds the base layer's
    file (read by the independent reader) and records what made its bytes."""
    from tests.harness.ext4reader import Ext4Image

    for name in names:
        image, record = project / f"out/{name}.ext4", project / f"out/{name}.json"
        data = json.loads(record.read_text())
        assert data["sha256"] == sha256_file(image), name
        fsck = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        with Ext4Image(image) as fs:
            assert fs.walk()["etc/os-release"].type in ("f", "l"), name   # the base's
        assert "derived_from" not in data, name       # every build is a full one
        if data["options"]["builder"] == "native":
            assert data["tool_versions"] == {} and data["native_writer_format"] >= 1, name
        else:
            assert "mkfs.ext4" in data["tool_versions"], name
            assert data["native_writer_format"] is None, name
    assert not list((project / "out").glob(".*")), "no temporary files left in out/"
