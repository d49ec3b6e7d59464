"""What the native writer's images are checked by: e2fsck, dumpe2fs, debugfs and the
independent reader (tests/harness/ext4reader.py), none of which share its code.

``fsck_clean`` fails on any e2fsck line beyond its pass headers and summary.
``check_round_trip`` walks the whole image with the reader and compares
every path with the tree: type, mode, owners, the four times (ns), xattrs,
targets, devices, link counts, sizes, content sha256 and the data blocks
(holes stay holes). ``debugfs_stat`` and ``debugfs_listing`` read entries
back through libext2fs.
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.ext4.native.inputs import FileType
from tests.ext4.native.trees import Tree
from tests.harness.ext4reader import Ext4Image

__all__ = ["fsck_clean", "features", "check_round_trip", "debugfs", "expected_time"]

_FSCK_OK = re.compile(r"e2fsck [0-9][^\n]*|Pass [1-5]: [A-Za-z ,]+|"
                      r".*: [0-9]+/[0-9]+ files \([0-9.]+% non-contiguous\), "
                      r"[0-9]+/[0-9]+ blocks|Using EXT2FS Library[^\n]*")
_TOOL_ENV = {"LC_ALL": "C", "PATH": "/usr/sbin:/sbin:/usr/bin:/bin",
             "DEBUGFS_PAGER": "__none__", "PAGER": "__none__"}


def fsck_clean(image: Path, *, e2fsck: str = "e2fsck",
               env: Mapping[str, str] | None = None) -> None:
    proc = subprocess.run([e2fsck, "-fn", str(image)], capture_output=True, text=True,
                          errors="backslashreplace", env={**_TOOL_ENV, **(env or {})},
                          check=False)
    problems = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and not _FSCK_OK.fullmatch(line.strip())]
    assert proc.returncode == 0 and not problems, proc.stdout + proc.stderr


def features(image: Path) -> dict[str, str]:
    out = subprocess.run(["dumpe2fs", "-h", str(image)], capture_output=True, text=True,
                         env=_TOOL_ENV, check=True).stdout
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in out.splitlines() if ":" in line)}


def debugfs(image: Path, commands: Sequence[str]) -> str:
    """Run ``commands`` in one debugfs (read-only) and return what it printed."""
    with tempfile.NamedTemporaryFile("wb", suffix=".debugfs") as script:
        script.write(b"".join(os.fsencode(c) + b"\n" for c in commands))
        script.flush()
        proc = subprocess.run(["debugfs", "-f", script.name, str(image)], capture_output=True,
                              env=_TOOL_ENV, check=True)
    return proc.stdout.decode("utf-8", "surrogateescape")


_MIN_S, _MAX_LARGE, _MAX_SMALL = -(2**31), 3 * 2**32 - 2**31 - 1, 2**31 - 1


def expected_time(ns: int, *, large: bool) -> int:
    """What ext4 can hold of ``ns``: itself, or the nearest whole second in range."""
    seconds = ns // 10**9
    high = _MAX_LARGE if large else _MAX_SMALL
    if _MIN_S <= seconds <= high:
        return ns if large else seconds * 10**9
    return min(max(seconds, _MIN_S), high) * 10**9


def check_round_trip(image: Path, tree: Tree, *, own_lost_found: bool = True) -> None:
    with Ext4Image(image) as img:
        large = img.inode_size > 128
        nodes = img.walk()
        want_paths = {e.path for e in tree.entries}
        if own_lost_found:
            want_paths.add("lost+found")
        assert set(nodes) == want_paths, (sorted(set(nodes) - want_paths)[:5],
                                          sorted(want_paths - set(nodes))[:5])
        names: dict[int, int] = {}
        subdirs: dict[str, int] = {}
        for e in tree.entries:
            names[nodes[e.path].ino] = names.get(nodes[e.path].ino, 0) + 1
            if e.type is FileType.DIRECTORY and e.path:
                parent = e.path.rpartition("/")[0]
                subdirs[parent] = subdirs.get(parent, 0) + 1
        if own_lost_found:
            subdirs[""] = subdirs.get("", 0) + 1
        groups: dict[int, int] = {}
        for e in tree.entries:
            node = nodes[e.path]
            where = e.path or "/"
            assert node.type == e.type.value, where
            assert (node.mode, node.uid, node.gid) == (e.mode, e.uid, e.gid), where
            t = expected_time(e.mtime_ns, large=large)
            assert node.mtime_ns == node.atime_ns == node.ctime_ns == t, (where, node, t)
            if large:
                assert node.crtime_ns == t, where
            assert node.xattrs == dict(e.xattrs), where
            if e.link_group is not None:
                assert groups.setdefault(e.link_group, node.ino) == node.ino, where
            if e.type is FileType.DIRECTORY:
                assert node.nlink == 2 + subdirs.get(e.path, 0), where
                continue
            assert node.nlink == names[node.ino], where
            if e.type is FileType.REGULAR:
                assert node.size == e.size and node.sha256 == tree.sha256[e.path], where
                assert _data_blocks(img, node.ino) == tree.data_blocks.get(e.path, 0), where
            elif e.type is FileType.SYMLINK:
                assert node.target == e.target and node.size == len(os.fsencode(e.target or ""))
            elif e.type in (FileType.CHAR, FileType.BLOCK):
                assert node.rdev == e.rdev, where


def _data_blocks(img: Ext4Image, ino: int) -> int:
    raw = img.raw_inode(ino)
    flags, = struct.unpack_from("<I", raw, 0x20)
    if not flags & 0x80000:
        return 0
    return sum(length for _, length, _, _ in img._extents(raw[0x28:0x28 + 60]))
