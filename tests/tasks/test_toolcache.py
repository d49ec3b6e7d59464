"""pipeline.tasks.toolcache: e2fsprogs versions remembered per binary, asked again on any change.

Each case runs in a fresh interpreter: ``ext4.tools.tool_versions`` caches its
answer for the life of a process, and what we check is what a new ``doit``
run sees.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.ext4.tools import tool_versions as ask_the_tools
from pipeline.tasks.toolcache import TOOLS_FILE

# End to end with real tools: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow

ASK = """
import json, sys
from pathlib import Path
from pipeline.tasks.toolcache import cached_tool_versions
print(json.dumps({"versions": cached_tool_versions(Path(sys.argv[1])),
                  "asked": "pipeline.ext4.tools" in sys.modules}))
"""

FAKE_MKFS = """#!/bin/sh
if [ "$1" = "-V" ]; then echo "mke2fs 1.47.9 (1-Jan-2030)" >&2; exit 0; fi
exec {real} "$@"
"""


def versions(cache: Path, path_prefix: Path | None = None) -> tuple[dict[str, str], bool]:
    env = dict(os.environ)
    if path_prefix is not None:
        env["PATH"] = f"{path_prefix}{os.pathsep}{env['PATH']}"
    proc = subprocess.run([sys.executable, "-c", ASK, str(cache)], capture_output=True,
                          text=True, env=env, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    return result["versions"], result["asked"]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


def test_the_first_run_asks_and_later_runs_do_not(cache: Path) -> None:
    real = ask_the_tools()
    assert versions(cache) == (real, True)
    assert json.loads((cache / TOOLS_FILE).read_text())["versions"] == real
    assert versions(cache) == (real, False)


def test_the_tools_an_mkfs_build_runs_key_builds(cache: Path) -> None:
    found, _ = versions(cache)
    # e2fsck checks every mkfs image; resize2fs and tune2fs went with derived builds.
    assert {"mkfs.ext4", "debugfs", "e2fsck"} == set(found)
    assert json.loads((cache / TOOLS_FILE).read_text())["tools"]["e2fsck"]["path"] == \
        shutil.which("e2fsck")


def test_a_different_binary_on_path_is_asked(cache: Path, tmp_path: Path) -> None:
    versions(cache)
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "mkfs.ext4").write_text(FAKE_MKFS.format(real=shutil.which("mkfs.ext4")))
    (shim / "mkfs.ext4").chmod(0o755)
    found, asked = versions(cache, shim)
    assert asked and found["mkfs.ext4"] == "1.47.9 (1-Jan-2030)"
    # The same binary rewritten in place (an upgrade): its identity moves, so ask again.
    (shim / "mkfs.ext4").write_text(FAKE_MKFS.replace("1.47.9", "1.47.8").format(
        real=shutil.which("mkfs.ext4")))
    found, asked = versions(cache, shim)
    assert asked and found["mkfs.ext4"] == "1.47.8 (1-Jan-2030)"
    assert versions(cache, shim) == (found, False)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda data: "not json", id="not-json"),
    pytest.param(lambda data: json.dumps({**data, "format": 2}), id="other-format"),
    pytest.param(lambda data: json.dumps({**data, "module": [0, 0, 0, 0, 0]}),
                 id="other-ext4-module"),
    pytest.param(lambda data: json.dumps({**data, "tools": {
        **data["tools"], "debugfs": {**data["tools"]["debugfs"], "id": [1, 2, 3, 4, 5]}}}),
        id="other-debugfs-identity"),
    pytest.param(lambda data: json.dumps({**data, "versions": {"mkfs.ext4": "1.47.0"}}),
                 id="tools-missing-from-versions"),
    pytest.param(lambda data: json.dumps({**data, "versions": {
        **data["versions"], "e2fsck": 147}}), id="version-not-text"),
])
def test_a_damaged_file_is_never_used(cache: Path, damage) -> None:  # type: ignore[no-untyped-def]
    real, _ = versions(cache)
    file = cache / TOOLS_FILE
    file.write_text(damage(json.loads(file.read_text())))
    assert versions(cache) == (real, True)
    assert versions(cache) == (real, False)  # and the next run trusts the rewritten file
