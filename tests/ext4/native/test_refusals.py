"""What ext4 cannot hold is refused with a clear error naming the path (and attribute),
and a refused build leaves nothing behind: no image, no temporary file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.errors import Ext4Error
from pipeline.ext4.native import (
    BadDevice,
    BadTree,
    BadXattr,
    NameTooLong,
    SymlinkTooLong,
    XattrTooLarge,
    write_ext4,
)
from pipeline.ext4.native.inputs import Ext4Options, FileType, FlatEntry
from tests.ext4.native.trees import MTIME_NS, TreeBuilder

Case = Callable[[TreeBuilder], None]


def _xattrs(path: str, xattrs: dict[str, bytes]) -> Case:
    return lambda b: b.file(path, b"x", xattrs=xattrs)


CASES: list[tuple[str, Case, type[Ext4Error], str]] = [
    ("name-256-bytes", lambda b: b.file("n" * 256, b"x"), NameTooLong,
     "the name is 256 bytes, more than ext4's 255"),
    ("symlink-4096-bytes", lambda b: b.symlink("l", "t" * 4096), SymlinkTooLong,
     "4096 bytes; ext4 holds 1 to 4095"),
    ("symlink-empty", lambda b: b.symlink("l", ""), SymlinkTooLong, "0 bytes"),
    ("symlink-nul", lambda b: b.symlink("l", "a\0b"), SymlinkTooLong, "with a NUL"),
    ("xattr-name-256", _xattrs("f", {"user." + "k" * 256: b""}), BadXattr,
     "256 bytes after its prefix"),
    ("xattr-unknown-prefix", _xattrs("f", {"foo.bar": b""}), BadXattr, "'foo.bar'"),
    ("xattr-system", _xattrs("f", {"system.sockprotoname": b""}), BadXattr,
     "'system.sockprotoname'"),
    ("xattr-bad-acl", _xattrs("f", {"system.posix_acl_access": b"junk"}), BadXattr,
     "not a version 2 POSIX ACL"),
    ("xattr-value-too-large", _xattrs("f", {"user.v": b"v" * 4050}), XattrTooLarge,
     "its value is 4050 bytes"),
    ("xattrs-too-many", _xattrs("f", {f"user.k{i}": b"v" * 1000 for i in range(5)}),
     XattrTooLarge, "5 extended attributes"),
    ("device-major", lambda b: b.device("d", FileType.CHAR, 4096, 0), BadDevice,
     "4096:0"),
    ("device-minor", lambda b: b.device("d", FileType.BLOCK, 8, 1 << 20), BadDevice,
     "8:1048576"),
]


@pytest.mark.parametrize("build, error, message", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refused(tmp_path: Path, build: Case, error: type[Ext4Error], message: str) -> None:
    b = TreeBuilder(tmp_path / "store")
    build(b)
    tree = b.build()
    out = tmp_path / "out" / "image.ext4"
    with pytest.raises(error) as caught:
        write_ext4(tree.entries, tree.content, out, Ext4Options(), seed="s")
    assert message in str(caught.value)
    path = tree.entries[1].path
    assert repr(path)[:40].rstrip("'") in str(caught.value)
    assert os.listdir(out.parent) == []              # nothing half-written, no temp file


def _root() -> FlatEntry:
    return FlatEntry("", FileType.DIRECTORY, 0o755, 0, 0, MTIME_NS)


@pytest.mark.parametrize("entries, message", [
    ([FlatEntry("a", FileType.DIRECTORY, 0o755, 0, 0, MTIME_NS)], "root directory"),
    ([_root(), FlatEntry("a/b", FileType.FIFO, 0o644, 0, 0, MTIME_NS)],
     "'a/b': its parent is not a directory"),
    ([_root(), FlatEntry("f", FileType.FIFO, 0o644, 0, 0, MTIME_NS),
      FlatEntry("f/b", FileType.FIFO, 0o644, 0, 0, MTIME_NS)], "'f/b': its parent"),
    ([_root(), FlatEntry("f", FileType.FIFO, 0o644, 0, 0, MTIME_NS),
      FlatEntry("f", FileType.FIFO, 0o644, 0, 0, MTIME_NS)], "appears twice"),
    ([_root(), FlatEntry("lost+found", FileType.FIFO, 0o644, 0, 0, MTIME_NS)],
     "lost+found must be a directory"),
    ([_root(), FlatEntry("d", FileType.CHAR, 0o644, 0, 0, MTIME_NS)], "no device numbers"),
    ([_root(), FlatEntry("f", FileType.FIFO, 0o644, 0, 0, MTIME_NS, link_group=1),
      FlatEntry("g", FileType.FIFO, 0o644, 0, 0, MTIME_NS, link_group=1)],
     "only regular files can be hard links"),
], ids=["no-root", "no-parent", "parent-not-dir", "twice", "lost-found-file", "no-rdev",
        "fifo-link"])
def test_not_a_tree(tmp_path: Path, entries: list[FlatEntry], message: str) -> None:
    with pytest.raises(BadTree, match=message.replace("+", r"\+")):
        write_ext4(entries, lambda e: None, tmp_path / "x.ext4", Ext4Options(), seed="s")
    assert os.listdir(tmp_path) == []


def test_content_that_disagrees_with_its_entry(tmp_path: Path) -> None:
    (tmp_path / "c").write_bytes(b"12345")
    entries = [_root(), FlatEntry("f", FileType.REGULAR, 0o644, 0, 0, MTIME_NS, size=6)]
    with pytest.raises(BadTree, match="'f': its content .* holds 5 bytes, the entry "
                                      "declares 6"):
        write_ext4(entries, lambda e: (str(tmp_path / "c"), None), tmp_path / "o" / "x.ext4",
                   Ext4Options(), seed="s")


def test_content_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "c")
    entries = [_root(), FlatEntry("f", FileType.REGULAR, 0o644, 0, 0, MTIME_NS, size=6)]
    with pytest.raises(BadTree, match="'f': its content .* holds 0 bytes"):
        write_ext4(entries, lambda e: (str(tmp_path / "c"), None), tmp_path / "o" / "x.ext4",
                   Ext4Options(), seed="s")
    assert os.listdir(tmp_path / "o") == []


def test_a_fixed_size_too_small(tmp_path: Path) -> None:
    b = TreeBuilder(tmp_path / "store")
    b.file("big", size=20 << 20, holes=[(0, b"x" * (20 << 20))])
    tree = b.build()
    with pytest.raises(Ext4Error, match="too small for this image: it needs at least"):
        write_ext4(tree.entries, tree.content, tmp_path / "o" / "x.ext4",
                   Ext4Options(size=16 << 20), seed="s")
