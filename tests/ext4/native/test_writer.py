"""The native writer end to end on hand-made trees: e2fsck, dumpe2fs, debugfs and the
independent reader agree with the entries, for every option the writer honours."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from pipeline.ext4.native import WRITER_FORMAT_VERSION, NativeResult, write_ext4
from pipeline.ext4.native.inputs import Ext4Options, FileType
from tests.ext4.native.oracle import check_round_trip, debugfs, features, fsck_clean
from tests.ext4.native.trees import MTIME_NS, Tree, TreeBuilder

PING_CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
ACL = bytes.fromhex("02000000" "01000600ffffffff" "02000400e8030000" "04000400ffffffff"
                    "10000400ffffffff" "20000000ffffffff")


def every_kind(store: Path) -> Tree:
    b = TreeBuilder(store)
    b.dir("etc")
    b.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    b.file("etc/empty")
    b.dir("usr", 0o755, uid=1000, gid=1000)
    b.dir("usr/bin")
    b.file("usr/bin/ping", b"\x7fELF" * 5000, 0o4755, uid=0, gid=0,
           xattrs={"security.capability": PING_CAPABILITY})
    b.file("usr/bin/su", b"su", 0o6755, uid=2**32 - 2, gid=2**31 + 5)
    b.hardlink("usr/bin/su2", "usr/bin/su")
    b.hardlink("etc/su3", "usr/bin/su")
    b.file("usr/bin/big", os.urandom(3 * 1024 * 1024 + 17))
    b.file("usr/bin/sparse", size=40 * 1024 * 1024,
           holes=[(0, b"head"), (5 * 1024 * 1024 + 3, b"middle" * 1000),
                  (40 * 1024 * 1024 - 3, b"end")])
    b.file("usr/bin/allhole", size=9 * 4096, holes=[])
    b.dir("tmp", 0o1777)
    b.symlink("bin", "usr/bin")
    b.symlink("etc/fast59", "f" * 59)
    b.symlink("etc/slow60", "s" * 60)
    b.symlink("etc/max", "m" * 4095)
    b.device("dev_null", FileType.CHAR, 1, 3, 0o666)
    b.device("dev_nvme", FileType.BLOCK, 259, 70000)
    b.device("dev_big", FileType.CHAR, 4095, 1048575)
    b.fifo("run_fifo", 0o620, uid=5, gid=6)
    b.file("times/old", b"", mtime_ns=-2_000_000_000_987_654_321)
    b.file("times/y2040", b"", mtime_ns=2_208_988_800_000_000_001)
    b.file("times/y2300", b"", mtime_ns=11_000_000_000_000_000_007)
    b.file("xattrs/inode", b"x", xattrs={"user.a": b"1", "trusted.t": b""})
    b.file("xattrs/block", b"x", xattrs={"user.big": b"v" * 3000, "user.small": b"s",
                                         "security.selinux": b"system_u:object_r:bin_t\0"})
    b.file("xattrs/acl", b"x", xattrs={"system.posix_acl_access": ACL})
    b.dir("xattrs/aclm", xattrs={"system.posix_acl_default": ACL})
    b.file(os.fsdecode(b"names/\xff\xfe not utf-8"), b"odd")
    b.file("names/" + "n" * 255, b"long")
    return b.build()


def _fix_dirs(tree: Tree) -> Tree:
    # Parents are implicit in every_kind(); add them as root-owned 0755 directories.
    from pipeline.ext4.native.inputs import FlatEntry
    have = {e.path for e in tree.entries}
    extra = []
    for e in tree.entries:
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in have:
                have.add(parent)
                extra.append(FlatEntry(parent, FileType.DIRECTORY, 0o755, 0, 0, MTIME_NS))
    entries = sorted([*tree.entries, *extra],
                     key=lambda e: tuple(os.fsencode(p) for p in e.path.split("/"))
                     if e.path else ())
    return Tree(entries, tree.files, tree.data_blocks, tree.sha256)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return _fix_dirs(every_kind(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def built(kinds: Tree, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, NativeResult]:
    out = tmp_path_factory.mktemp("img") / "every.ext4"
    result = write_ext4(kinds.entries, kinds.content, out, Ext4Options(label="rootfs"),
                        seed="every-kind")
    return out, result


def test_every_kind_checks_clean_and_reads_back(kinds: Tree,
                                                built: tuple[Path, NativeResult]) -> None:
    image, result = built
    fsck_clean(image)
    check_round_trip(image, kinds)
    assert result.clamped_times == ("times/y2300",)
    assert os.stat(image).st_mode & 0o777 == 0o644
    assert result.size == os.stat(image).st_size
    # Sparse output: the 40 MiB file's holes cost nothing on the host either.
    assert os.stat(image).st_blocks * 512 < result.size // 2


def test_superblock_shows_the_default_features(built: tuple[Path, NativeResult]) -> None:
    sb = features(built[0])
    assert set(sb["Filesystem features"].split()) == {
        "has_journal", "ext_attr", "resize_inode", "dir_index", "filetype", "extent",
        "64bit", "flex_bg", "sparse_super", "large_file", "huge_file", "dir_nlink",
        "extra_isize", "metadata_csum"}
    assert sb["Filesystem volume name"] == "rootfs"
    assert sb["Filesystem UUID"] == built[1].uuid
    assert sb["Checksum type"] == "crc32c"
    assert sb["Default directory hash"] == "half_md4"
    assert sb["Filesystem flags"] == "signed_directory_hash"
    assert sb["Filesystem created"] == "Thu Jan  1 00:00:01 1970"
    assert sb["Journal features"] == "(none)"
    assert sb["Inode size"] == "256"
    assert sb["Flex block group size"] == "16"


def test_debugfs_reads_what_the_entries_declare(built: tuple[Path, NativeResult]) -> None:
    image = built[0]
    out = debugfs(image, ["stat /usr/bin/ping", "ea_list /usr/bin/ping", "stat /usr/bin/su",
                          "stat /dev_nvme", "stat /run_fifo", "ls -p /usr/bin",
                          "stat /times/y2040", "ea_list /xattrs/block", "stat /etc/max"])
    assert "Mode:  04755" in out and "security.capability (20)" in out
    assert re.search(r"User: +-2 +Group: -2147483643", out)     # debugfs prints them signed
    assert "Links: 3" in out
    assert "Device major/minor number: 259:70000" in out
    assert "Type: FIFO" in out and "Mode:  0620" in out
    assert "mtime: 0x83aa7e80:00000005 -- Sun Jan  1 00:00:00 2040" in out   # epoch 1, 1 ns
    assert "user.big (3000)" in out and 'security.selinux (24) = "system_u' in out
    assert "Size: 4095" in out
    listed = {line.split("/")[5] for line in out.splitlines() if line.startswith("/")}
    assert {"ping", "su", "su2", "big", "sparse", "allhole"} <= listed


def test_same_input_same_bytes_and_another_seed_another_uuid(
        kinds: Tree, built: tuple[Path, NativeResult], tmp_path: Path) -> None:
    again = write_ext4(kinds.entries, kinds.content, tmp_path / "again.ext4",
                       Ext4Options(label="rootfs"), seed="every-kind")
    assert (tmp_path / "again.ext4").read_bytes() == built[0].read_bytes()
    other = write_ext4(kinds.entries, kinds.content, tmp_path / "other.ext4",
                       Ext4Options(label="rootfs"), seed="another")
    assert other.uuid != again.uuid
    assert isinstance(WRITER_FORMAT_VERSION, int)


@pytest.mark.parametrize("options", [
    Ext4Options(inode_size=128),
    Ext4Options(inode_size=512),
    Ext4Options(inode_size=1024),
    Ext4Options(journal=False),
    Ext4Options(features=("^metadata_csum",)),
    Ext4Options(features=("^flex_bg",)),
    Ext4Options(features=("^resize_inode",)),
    Ext4Options(features=("^dir_index",)),
    Ext4Options(features=("^64bit",)),
    Ext4Options(features=("^huge_file", "^dir_nlink", "^extra_isize")),
    Ext4Options(features=("large_dir", "metadata_csum_seed")),
    Ext4Options(reserved_percent=5),
    Ext4Options(size="300MiB"),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.to_dict().items()
                          if v != Ext4Options().to_dict()[k]) or "default")
def test_options(kinds: Tree, options: Ext4Options, tmp_path: Path) -> None:
    image = tmp_path / "o.ext4"
    result = write_ext4(kinds.entries, kinds.content, image, options, seed="opts")
    fsck_clean(image)
    check_round_trip(image, kinds)
    sb = features(image)
    assert set(sb["Filesystem features"].split()) == options.feature_set()
    if options.size is not None:
        assert result.size == options.size
    if options.reserved_percent:
        assert int(sb["Reserved block count"]) == int(result.size // 4096 * 0.05)
