"""The images check clean with a newer e2fsprogs too (1.47.2 from bookworm-backports,
unpacked, not installed), and that release's resize2fs grows them; skips when the
packages cannot be fetched."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.ext4.native import write_ext4
from pipeline.ext4.native.inputs import Ext4Options
from tests.ext4.native.newer_e2fsprogs import NewerE2fsprogs, newer_e2fsprogs
from tests.ext4.native.oracle import check_round_trip, fsck_clean
from tests.ext4.native.trees import every_kind, random_tree


@pytest.fixture(scope="module")
def newer() -> NewerE2fsprogs:
    tools = newer_e2fsprogs()
    if tools is None:
        pytest.skip("e2fsprogs from bookworm-backports could not be fetched")
    assert tools.version.startswith("1.47.")
    return tools


@pytest.mark.parametrize("options", [Ext4Options(), Ext4Options(inode_size=128),
                                     Ext4Options(features=("large_dir", "^flex_bg"))],
                         ids=["default", "128", "large_dir-noflex"])
def test_newer_e2fsck_is_clean(newer: NewerE2fsprogs, tmp_path: Path,
                               options: Ext4Options) -> None:
    tree = every_kind(tmp_path / "store")
    image = tmp_path / "i.ext4"
    write_ext4(tree.entries, tree.content, image, options, seed="newer")
    fsck_clean(image, e2fsck=newer.tool("e2fsck"), env=newer.env)


def test_newer_resize2fs_grows(newer: NewerE2fsprogs, tmp_path: Path) -> None:
    tree = random_tree(tmp_path / "store", 21, entries=200)
    image = tmp_path / "g.ext4"
    result = write_ext4(tree.entries, tree.content, image, Ext4Options(), seed="grow")
    grown = tmp_path / "grown.ext4"
    shutil.copyfile(image, grown)
    os.truncate(grown, result.size + (3 << 30))
    subprocess.run([newer.tool("resize2fs"), str(grown)], check=True, capture_output=True,
                   env={**newer.env, "PATH": os.environ.get("PATH", "")})
    fsck_clean(grown, e2fsck=newer.tool("e2fsck"), env=newer.env)
    fsck_clean(grown)
    check_round_trip(grown, tree)
