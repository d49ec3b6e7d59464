"""The e2fsprogs tools the builders run: which, how recent, and how they are run.

Their versions key every mkfs task (a new toolchain rebuilds, as the bytes of
an image depend on it); their output is pinned in time (``fake_time_env``);
``fsck_image`` is the strict check every build ends with.

Trusts nothing the tools print beyond a version banner and e2fsck's pass
headers: any other e2fsck line fails the build.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from pathlib import Path

from pipeline.errors import ToolError
from pipeline.ext4.debugfs import tool_env

__all__ = ["tool_versions", "probe_version", "version_tuple", "fake_time_env", "fsck_image",
           "MIN_E2FSPROGS", "BAD_BIG_FILES", "TWO_GIB", "FS_EPOCH", "TOOLS"]

# -E root_owner, -E hash_seed and -d with xattrs are all older, but 1.46.5 is
# the oldest release whose -d output we have checked byte for byte.
MIN_E2FSPROGS = (1, 46, 5)
# 1.47.3 truncates files over 2 GiB copied with -d (fixed in 1.47.4).
BAD_BIG_FILES = (1, 47, 3)
TWO_GIB = 2 * 1024**3
# Superblock and mke2fs-made inode times (lost+found, the journal): a fixed
# instant, as the image has no meaningful build time. 0 means "unset" to
# e2fsprogs, which would then use the clock.
FS_EPOCH = 1
# Each tool an mkfs build runs and the arguments that make it print its banner.
TOOLS = {"mkfs.ext4": ["-V"], "debugfs": ["-V"], "e2fsck": ["-V"]}
_FSCK_OK = re.compile(
    r"e2fsck [0-9][^\n]*|Pass [1-5]: [A-Za-z ,]+|"
    r".*: [0-9]+/[0-9]+ files \([0-9.]+% non-contiguous\), [0-9]+/[0-9]+ blocks")


def tool_versions() -> dict[str, str]:
    """Versions of every e2fsprogs tool a build runs, e.g. ``{"mkfs.ext4": "1.47.0
    (5-Feb-2023)", ...}``: what keys an mkfs task.

    Raises ToolError when a tool is missing or older than MIN_E2FSPROGS.
    """
    return dict(_tool_versions())


@functools.lru_cache(maxsize=1)
def _tool_versions() -> tuple[tuple[str, str], ...]:
    versions: dict[str, str] = {}
    for tool, args in TOOLS.items():
        versions[tool] = probe_version(tool, args)
        if version_tuple(versions[tool]) < MIN_E2FSPROGS:
            raise ToolError(tool, f"version {versions[tool]!r} is too old; install e2fsprogs "
                                  f"{'.'.join(map(str, MIN_E2FSPROGS))} or later")
    return tuple(versions.items())


def probe_version(tool: str, args: list[str]) -> str:
    """The version an e2fsprogs tool prints in its banner when run with ``args``, e.g.
    ``"1.47.0 (5-Feb-2023)"``; ToolError when it is missing or prints none."""
    if shutil.which(tool) is None:
        raise ToolError(tool, "not found on PATH; install e2fsprogs "
                              f"{'.'.join(map(str, MIN_E2FSPROGS))} or later")
    proc = subprocess.run([tool, *args], capture_output=True, text=True, env=tool_env(),
                          stdin=subprocess.DEVNULL, check=False)
    match = re.search(r"^\S+ ([0-9][0-9.]*[^\n]*)$", proc.stderr + proc.stdout, re.MULTILINE)
    if match is None:
        raise ToolError(tool, f"{' '.join([tool, *args])} printed no version",
                        returncode=proc.returncode, stderr=proc.stderr)
    return match.group(1).strip()


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"[0-9]+", version.split()[0])[:3])


def fake_time_env() -> dict[str, str]:
    """The environment that pins e2fsprogs' own timestamps to FS_EPOCH."""
    return {"E2FSPROGS_FAKE_TIME": str(FS_EPOCH), "SOURCE_DATE_EPOCH": str(FS_EPOCH)}


def fsck_image(image: Path) -> None:
    """``e2fsck -fn``: ToolError on any finding, with what it printed."""
    proc = subprocess.run(["e2fsck", "-fn", str(image)], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, errors="backslashreplace",
                          env=tool_env(), check=False)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and not _FSCK_OK.fullmatch(line.strip())]
    if proc.returncode != 0 or problems:
        raise ToolError("e2fsck", "the image built from the flat image does not check "
                                  "clean, which is a bug in the builder",
                        returncode=proc.returncode,
                        stderr="\n".join(problems) or proc.stdout + proc.stderr)
