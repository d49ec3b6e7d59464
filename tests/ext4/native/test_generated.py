"""Generated trees (seeded): odd names, holes, xattrs of every size class, hard links,
symlinks of all lengths, devices, deep paths, directories of 1 to 100,000 entries;
e2fsck clean and read back exactly. Also: resize2fs grows an image."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from pipeline.ext4.native import write_ext4
from pipeline.ext4.native.inputs import Ext4Options
from tests.ext4.native.oracle import check_round_trip, debugfs, fsck_clean
from tests.ext4.native.trees import TreeBuilder, random_tree


def _listing(image: Path, directory: str) -> set[bytes]:
    out = os.fsencode(debugfs(image, [f'ls -p "{directory}"']))
    records = re.findall(rb"^/(\d+)/\d+/-?\d+/-?\d+/(.*?)/\d*/$", out, re.MULTILINE | re.DOTALL)
    # Inode 0: the empty entry spanning an htree index block, which ls -p prints too.
    return {name for ino, name in records if ino != b"0"} - {b".", b".."}


@pytest.mark.parametrize("seed, packed", [(1, False), (2, False), (3, False), (4, True),
                                          (5, True)])
def test_random_trees(tmp_path: Path, seed: int, packed: bool) -> None:
    """Contents in a file each or, as layer stores hold them, in one pack."""
    tree = random_tree(tmp_path / "store", seed, entries=300, packed=packed)
    image = tmp_path / "r.ext4"
    write_ext4(tree.entries, tree.content, image, Ext4Options(), seed=f"gen{seed}")
    fsck_clean(image)
    check_round_trip(image, tree)
    root = {os.fsencode(e.path) for e in tree.entries if e.path and "/" not in e.path}
    assert _listing(image, "/") == root | {b"lost+found"}


@pytest.mark.slow
@pytest.mark.parametrize("seed, options", [
    (11, Ext4Options()), (12, Ext4Options(inode_size=128)),
    (13, Ext4Options(features=("^metadata_csum", "^flex_bg")))], ids=["default", "128", "old"])
def test_large_random_trees(tmp_path: Path, seed: int, options: Ext4Options) -> None:
    tree = random_tree(tmp_path / "store", seed, entries=3000, max_file=24 << 20)
    image = tmp_path / "r.ext4"
    write_ext4(tree.entries, tree.content, image, options, seed=f"gen{seed}")
    fsck_clean(image)
    check_round_trip(image, tree)


def test_directories_of_every_size(tmp_path: Path) -> None:
    b = TreeBuilder(tmp_path / "store")
    for count in (0, 1, 10, 100, 1000, 5000):
        b.dir(f"d{count}")
        for i in range(count):
            b.file(f"d{count}/entry-{i:06d}-{'x' * (i % 50)}")
    tree = b.build()
    image = tmp_path / "dirs.ext4"
    write_ext4(tree.entries, tree.content, image, Ext4Options(), seed="dirs")
    fsck_clean(image)
    check_round_trip(image, tree)
    out = debugfs(image, ["htree_dump /d5000", "stat /d10"])
    assert "Indirect levels: 0" in out and "Flags: 0x80000" in out


@pytest.mark.slow
def test_a_directory_of_100000_entries(tmp_path: Path) -> None:
    """Two index levels (names of ~45 bytes fill ~1,200 leaves); built in seconds;
    every name listed, a sample found by path lookup."""
    b = TreeBuilder(tmp_path / "store")
    b.dir("big")
    names = [f"file-{i:06d}-{'q' * 32}" for i in range(100_000)]
    for name in names:
        b.file(f"big/{name}")
    tree = b.build()
    image = tmp_path / "big.ext4"
    started = time.monotonic()
    write_ext4(tree.entries, tree.content, image, Ext4Options(), seed="big")
    assert time.monotonic() - started < 20
    fsck_clean(image)
    head = debugfs(image, ["htree_dump /big"])
    assert "Indirect levels: 1" in head
    assert _listing(image, "/big") == {n.encode() for n in names}
    sample = random.Random(5).sample(names, 200)
    out = debugfs(image, [f"stat /big/{n}" for n in sample])
    assert out.count("Type: regular") == 200 and "not found" not in out


def test_resize2fs_grows_an_image(tmp_path: Path) -> None:
    tree = random_tree(tmp_path / "store", 7, entries=200)
    image = tmp_path / "g.ext4"
    result = write_ext4(tree.entries, tree.content, image, Ext4Options(), seed="grow")
    grown = tmp_path / "grown.ext4"
    shutil.copyfile(image, grown)
    os.truncate(grown, result.size + (1 << 30))
    proc = subprocess.run(["resize2fs", str(grown)], capture_output=True, text=True,
                          env={"PATH": "/usr/sbin:/sbin:/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert "is now" in proc.stdout
    fsck_clean(grown)
    check_round_trip(grown, tree)
