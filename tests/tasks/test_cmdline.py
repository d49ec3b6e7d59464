"""Typos and interruptions on the command line: one line each, the right exit status.

Runs the real doit (tests/harness/doitrun.py) on a project whose registry is
a scripted server on 127.0.0.1 that never finishes a manifest, so nothing
here needs a real registry and a run that should not start never does.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.errors import SettingError
from pipeline.tasks.cmdline import check_requested, parse_switch, requested_images
from tests.harness.doitrun import run_doit, start_doit, wait_for
from tests.harness.hostileserver import HostileServer, Script


@pytest.fixture
def slow_registry() -> Iterator[HostileServer]:
    with HostileServer() as server:
        # A manifest that takes a minute: a run is busy in resolve for as long as we like.
        server.add("/manifests/", Script.trickle(60, every_s=1.0))
        yield server


def project(tmp_path: Path, registry: str) -> Path:
    (tmp_path / "images.toml").write_text(
        f'[images.alpine]\nref = "{registry}/library/alpine:3.20"\n'
        f'[images.debian]\nref = "{registry}/library/debian:12"\n')
    return tmp_path


CASES = [
    pytest.param(("mkfs:alpnie",), {}, "ERROR: task='mkfs:alpnie' is not valid: expected a task"
                 " of an image in the manifest: mkfs:alpine, mkfs:debian", id="unknown-image"),
    pytest.param(("flatten:nope",), {}, "ERROR: task='flatten:nope' is not valid: expected a"
                 " task of an image in the manifest: flatten:alpine, flatten:debian",
                 id="unknown-image-flatten"),
    pytest.param(("info", "mkfs:alpine"), {}, "ERROR: task='mkfs:alpine' is not valid: expected"
                 " a resolved image: 'alpine' is not in the lock file yet; run `doit"
                 " resolve:alpine` (or `doit`) first", id="info-before-resolve"),
    pytest.param(("fozen=1",), {}, "ERROR: fozen='1' is not valid: expected a variable among"
                 " manifest=..., frozen=..., log=..., log_level=..., shard=..., shards=...,"
                 " fetch=... (unknown variable 'fozen')",
                 id="unknown-variable"),
    pytest.param((), {"ROOTFS_FROZEN": "2"}, "ERROR: ROOTFS_FROZEN='2' is not valid: expected"
                 " one of 1, true, yes, on, 0, false, no, off", id="bad-frozen-environment"),
    pytest.param(("frozen=maybe",), {}, "ERROR: frozen='maybe' is not valid: expected one of"
                 " 1, true, yes, on, 0, false, no, off", id="bad-frozen-variable"),
    pytest.param((), {"ROOTFS_LOG": "xml"}, "ERROR: ROOTFS_LOG='xml' is not valid: expected one"
                 " of json, console", id="bad-log-environment"),
]


@pytest.mark.parametrize("args, env, line", CASES)
def test_typos_are_one_error_line_and_exit_3(tmp_path: Path, slow_registry: HostileServer,
                                             args: tuple[str, ...], env: dict[str, str],
                                             line: str) -> None:
    run = run_doit(project(tmp_path, slow_registry.host), *args, env=env, audit=True)
    assert (run.returncode, run.stdout, run.stderr) == (3, "", line + "\n")
    assert run.connects == [] and slow_registry.heads == []


def _output_is_a_file(p: Path) -> None:
    (p / "out").write_text("not a directory")


def _output_cannot_be_created(p: Path) -> None:
    (p / "ro").mkdir(mode=0o500)
    with open(p / "images.toml", "a") as f:
        f.write('[settings]\noutput_dir = "ro/out"\n')


def _output_under_a_file(p: Path) -> None:
    """Not creatable for root too (ENOTDIR), so CI, which runs as root, runs it."""
    (p / "afile").write_text("a regular file where a directory is needed")
    with open(p / "images.toml", "a") as f:
        f.write('[settings]\noutput_dir = "afile/out"\n')


def _size_beyond_the_host(p: Path) -> None:
    """64 TiB: ext4 hosts stop at 16 TiB per file (EFBIG)."""
    probe = p / "probe"
    with open(probe, "wb") as handle:
        try:
            os.ftruncate(handle.fileno(), 64 << 40)
        except OSError:
            pass
        else:
            pytest.skip("this temporary filesystem holds 64 TiB files (not ext4)")
    probe.unlink()
    with open(p / "images.toml", "a") as f:
        f.write('size = "64TiB"\n')


def _cache_is_a_file(p: Path) -> None:
    (p / ".cache").write_text("not a directory")


def _lock_not_json(p: Path) -> None:
    (p / "images.lock.json").write_text("{ this is not json")


def _lock_deeply_nested(p: Path) -> None:
    (p / "images.lock.json").write_text('{"lockfile_version": 1, "images": ' + "[" * 100_000)


LOCAL = [
    pytest.param(_output_is_a_file, "ERROR: {p}/images.toml: `output_dir` '{p}/out' exists and"
                 " is not a directory; move it away or set `output_dir` elsewhere",
                 id="output-dir-is-a-file"),
    pytest.param(_output_cannot_be_created, "ERROR: {p}/images.toml: `output_dir` '{p}/ro/out'"
                 " cannot be created or written (Permission denied); fix its permissions or"
                 " set `output_dir` elsewhere", id="output-dir-not-creatable"),
    pytest.param(_output_under_a_file, "ERROR: {p}/images.toml: `output_dir` '{p}/afile/out'"
                 " cannot be created or written (Not a directory); a parent of it is a file,"
                 " move that away or set `output_dir` elsewhere", id="output-dir-under-a-file"),
    pytest.param(_size_beyond_the_host, "ERROR: {p}/images.toml:3: image 'debian': `size` 64"
                 " TiB (70368744177664 bytes) is more than the filesystem holding '{p}/out'"
                 " allows in one file (File too large); choose a smaller `size` or an"
                 " output_dir on a filesystem that allows larger files", id="size-efbig"),
    pytest.param(_cache_is_a_file, "ERROR: {p}/images.toml: `cache_dir` '{p}/.cache' exists and"
                 " is not a directory; move it away or set `cache_dir` elsewhere",
                 id="cache-dir-is-a-file"),
    pytest.param(_lock_not_json, "ERROR: {p}/images.lock.json: not valid JSON (Expecting"
                 " property name enclosed in double quotes: line 1 column 3 (char 2)); fix it by"
                 " hand or delete it and run `doit` to resolve again", id="lock-not-json"),
    pytest.param(_lock_deeply_nested, "ERROR: {p}/images.lock.json: nested more than 64 levels"
                 " deep (at least 65); fix it by hand or delete it and run `doit` to resolve"
                 " again", id="lock-deeply-nested"),
]


@pytest.mark.parametrize("spoil, line", LOCAL)
def test_unusable_local_state_is_one_line_and_exit_3(
        tmp_path: Path, slow_registry: HostileServer, spoil: Callable[[Path], None],
        line: str) -> None:
    if os.geteuid() == 0 and "Permission denied" in line:
        pytest.skip("root writes into a 0500 directory")
    p = project(tmp_path, slow_registry.host)
    spoil(p)
    run = run_doit(p, audit=True, timeout=60)
    assert (run.returncode, run.stdout, run.stderr) == (3, "", line.format(p=p) + "\n")
    assert slow_registry.heads == []


def test_ctrl_c_is_one_line_and_exit_130(tmp_path: Path, slow_registry: HostileServer) -> None:
    log = tmp_path / "doit.log"
    (tmp_path / "p").mkdir()
    proc = start_doit(project(tmp_path / "p", slow_registry.host), log=log)
    try:
        wait_for(lambda: len(slow_registry.heads) > 0, timeout=30, what="the first request")
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log.read_text()
    assert proc.returncode == -signal.SIGINT, text
    assert "Traceback" not in text, text
    assert text.rstrip("\n").splitlines()[-1] == (
        "interrupted (Ctrl-C): stopped; finished steps are kept, unfinished ones left no"
        " output; run `doit` again to continue")


@pytest.mark.parametrize("value, on", [
    ("1", True), ("TRUE", True), (" yes ", True), ("on", True),
    ("0", False), ("false", False), ("No", False), ("off", False), ("", False), (None, False),
])
def test_switch_values(value: str | None, on: bool) -> None:
    assert parse_switch("frozen", value) is on


def test_requested_images_reads_only_our_task_families() -> None:
    argv = ["doit", "-f", "dodo.py", "info", "mkfs:a", "resolve:b", "fetch-blob:sha256:x",
            "log=json", "-d", "mkfs"]
    assert requested_images(argv) == ("info", [("mkfs", "a"), ("resolve", "b")])


def test_resolve_of_an_unresolved_image_is_fine_for_info() -> None:
    check_requested(["doit", "info", "resolve:a"], ["a"], [])
    with pytest.raises(SettingError, match="run `doit resolve:a` \\(or `doit`\\) first"):
        check_requested(["doit", "info", "mkfs:a"], ["a"], [])
    check_requested(["doit", "mkfs:a"], ["a"], [])  # a run resolves first
