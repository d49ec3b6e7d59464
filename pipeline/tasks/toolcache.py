"""The e2fsprogs versions that key every mkfs task, remembered per binary.

Every run, a no-op included, of a manifest with an image built by the mkfs
builder needs ``ext4.tools.tool_versions()`` (the mkfs.ext4, debugfs and
e2fsck an mkfs build runs) to build the mkfs tasks' keys (a new toolchain
must rebuild); the native builder runs none of them (``versions_used``), so
a manifest of native images neither asks nor needs e2fsprogs installed.
Asking costs importing the ext4 builder and running each tool; the answer
changes only when a binary does. So it is kept in ``<cache_dir>/tools.json``
together with, for each tool, the path ``PATH`` finds it at and that file's
identity (device, inode, size, mtime, ctime), and the identity of the modules
that ask (``pipeline/ext4/tools.py``: it decides which tools count and how a version
is read). Any difference, a missing tool, or a
file we cannot read or parse means asking again; nothing in the file is used
unless every identity still matches, so the worst a stale or tampered file can
do is cost one ask.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Collection
from pathlib import Path
from typing import Any

import structlog

from pipeline.base.files import write_atomic
from pipeline.base.jsontext import loads_bounded

__all__ = ["cached_tool_versions", "versions_used", "TOOLS_FILE"]

log = structlog.get_logger(__name__)

TOOLS_FILE = "tools.json"
_FORMAT = 1
# The modules whose versions this stands in for, beside this package.
_MODULES = (Path(__file__).resolve().parents[1] / "ext4" / "tools.py",)


def _identity(path: str | os.PathLike[str]) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _where(tool: str) -> dict[str, Any] | None:
    found = shutil.which(tool)
    identity = None if found is None else _identity(found)
    return None if found is None or identity is None else {"path": found, "id": identity}


def _modules() -> list[list[int] | None]:
    return [_identity(module) for module in _MODULES]


def _remembered(file: Path) -> dict[str, str] | None:
    try:
        data = loads_bounded(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (not isinstance(data, dict) or data.get("format") != _FORMAT
            or data.get("module") != _modules()):
        return None
    tools, versions = data.get("tools"), data.get("versions")
    if not isinstance(tools, dict) or not isinstance(versions, dict) or not versions \
            or set(tools) != set(versions):
        return None
    for tool in tools:
        if _where(tool) != tools[tool] or not isinstance(versions[tool], str):
            return None
    return dict(versions)


def cached_tool_versions(cache_dir: Path) -> dict[str, str]:
    """``ext4.tools.tool_versions()``, answered from ``cache_dir/tools.json`` while
    no tool changed.

    Raises what that raises (ToolError for a missing or too old tool) whenever
    it has to ask.
    """
    file = Path(cache_dir) / TOOLS_FILE
    found = _remembered(file)
    if found is not None:
        return found
    # The builder loads only when the answer is unknown.
    from pipeline.ext4.tools import tool_versions as ask

    versions = ask()
    tools = {tool: _where(tool) for tool in versions}
    if all(tools.values()):
        data = {"format": _FORMAT, "module": _modules(), "tools": tools,
                "versions": versions}
        try:
            write_atomic(file, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
        except OSError as err:  # only a cache: the next run asks again
            log.debug("tools.not_remembered", path=str(file), error=str(err))
    return versions


def versions_used(cache_dir: Path, builders: Collection[str]) -> dict[str, str]:
    """``cached_tool_versions`` when one of ``builders`` is mkfs, else nothing to ask:
    the native writer's output depends on no tool (its format version keys it)."""
    return cached_tool_versions(cache_dir) if "mkfs" in builders else {}
