"""The native writer end to end on hand-made trees: e2fsck, dumpe2fs, debugfs and the
independent reader agree with the entries, for every option the writer honours."""

from __future__ import annotations

import hashlib
import os
import random
import re
import sys
from pathlib import Path

import pytest

from pipeline.ext4.native import WRITER_FORMAT_VERSION, NativeResult, write_ext4
from pipeline.ext4.native.errors import BadTree
from pipeline.ext4.native.inputs import Ext4Options, ImageOutput
from pipeline.ext4.native.writer import _write, write_image
from tests.ext4.native.oracle import check_round_trip, debugfs, features, fsck_clean
from tests.ext4.native.trees import Tree, TreeBuilder, every_kind
from tests.harness.ext4reader import Ext4Image


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> Tree:
    return every_kind(tmp_path_factory.mktemp("store"))


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
    assert {"ping", "su", "su2", "big", "sparse", "allhole", "holey"} <= listed


def test_same_input_same_bytes_and_another_seed_another_uuid(
        kinds: Tree, built: tuple[Path, NativeResult], tmp_path: Path) -> None:
    again = write_ext4(kinds.entries, kinds.content, tmp_path / "again.ext4",
                       Ext4Options(label="rootfs"), seed="every-kind")
    assert (tmp_path / "again.ext4").read_bytes() == built[0].read_bytes()
    other = write_ext4(kinds.entries, kinds.content, tmp_path / "other.ext4",
                       Ext4Options(label="rootfs"), seed="another")
    assert other.uuid != again.uuid
    assert isinstance(WRITER_FORMAT_VERSION, int)


def test_contents_in_one_pack_read_back_with_their_holes(tmp_path: Path) -> None:
    """As layer stores hold them: ranges of one file, dense ones at any offset, sparse
    ones (so the whole pack is sparse: the dense attempt is given up) probed in place;
    the blocks each file owns are checked, so a hole filled or data lost fails."""
    packed = every_kind(tmp_path / "pack", packed=True)
    assert {ref[1] is not None for ref in packed.files.values()} == {True}
    out = tmp_path / "packed.ext4"
    write_ext4(packed.entries, packed.content, out, Ext4Options(label="rootfs"),
               seed="every-kind")
    fsck_clean(out)
    check_round_trip(out, packed)
    probed = tmp_path / "probed.ext4"
    with ImageOutput(probed) as image:
        _write(packed.entries, packed.content, image.fd, Ext4Options(label="rootfs"),
               seed="every-kind", assume_dense=False)
        image.publish()
    assert probed.read_bytes() == out.read_bytes()


def test_a_dense_pack_is_copied_by_ranges_and_checked_for_length(tmp_path: Path) -> None:
    trees = []
    for packed in (False, True):
        b = TreeBuilder(tmp_path / f"store-{packed}", packed=packed)
        for i, size in enumerate((1, 4095, 4097, 300 << 10, 5)):
            b.file(f"f{i}", random.Random(i).randbytes(size))
        trees.append(b.build())
    images = [tmp_path / "each.ext4", tmp_path / "pack.ext4"]
    for tree, image in zip(trees, images):
        write_ext4(tree.entries, tree.content, image, Ext4Options(), seed="dense")
    assert images[0].read_bytes() == images[1].read_bytes()
    check_round_trip(images[1], trees[1])
    pack = tmp_path / "store-True" / "content"
    os.chmod(pack, 0o644)
    os.truncate(pack, os.stat(pack).st_size - 1)
    with pytest.raises(BadTree, match="holds 315397 bytes, the entry's range ends at 315398"):
        write_ext4(trees[1].entries, trees[1].content, tmp_path / "short.ext4",
                   Ext4Options(), seed="dense")
    assert not (tmp_path / "short.ext4").exists()


def test_sparse_content_taken_as_dense_is_rewritten_to_the_same_bytes(
        kinds: Tree, built: tuple[Path, NativeResult], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The tree has sparse files: the dense first attempt is given up for a probed one,
    whose bytes are those of a build that probes from the start; and a copy helper
    that cannot start leaves the copies to the writer's own process, same bytes."""
    probed = tmp_path / "probed.ext4"
    with ImageOutput(probed) as out:
        _write(kinds.entries, kinds.content, out.fd, Ext4Options(label="rootfs"),
               seed="every-kind", assume_dense=False)
        out.publish()
    assert probed.read_bytes() == built[0].read_bytes()
    monkeypatch.setattr(sys, "executable", "")
    write_ext4(kinds.entries, kinds.content, tmp_path / "inproc.ext4",
               Ext4Options(label="rootfs"), seed="every-kind")
    assert (tmp_path / "inproc.ext4").read_bytes() == built[0].read_bytes()


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
    Ext4Options(size=300 << 20),
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


def test_a_large_fixed_size(kinds: Tree, tmp_path: Path) -> None:
    """200 GiB: 1,600 groups in 100 flex groups, backups up to group 1,029, a 1 GiB
    journal in eight extents under an index block; the file stays small (sparse)."""
    image = tmp_path / "large.ext4"
    result = write_ext4(kinds.entries, kinds.content, image, Ext4Options(size=200 << 30),
                        seed="large")
    assert result.size == 200 << 30
    fsck_clean(image)
    check_round_trip(image, kinds)
    assert "(ETB0)" in debugfs(image, ["stat <8>"])
    assert os.stat(image).st_blocks * 512 < 64 << 20


def test_a_file_past_4_gib(tmp_path: Path) -> None:
    """A sparse 5 GiB file: i_size_high, extents past block 2^20, two data blocks."""
    b = TreeBuilder(tmp_path / "store")
    b.file("huge", size=5 << 30, holes=[(1 << 20, b"mid"), ((5 << 30) - 1, b"e")],
           checksum=False)
    tree = b.build()
    image = tmp_path / "huge.ext4"
    write_ext4(tree.entries, tree.content, image, Ext4Options(), seed="huge")
    fsck_clean(image)
    out = debugfs(image, ["stat /huge"])
    assert "Size: 5368709120" in out and "(256):" in out and "(1310719):" in out
    ino = int(re.search(r"Inode: (\d+)", out).group(1))  # type: ignore[union-attr]
    with Ext4Image(image) as img:               # not walk(): it would hash 5 GiB
        extents = img._extents(img.raw_inode(ino)[0x28:0x28 + 60])
        found = {lblk: img.block(pblk) for lblk, _, pblk, _ in extents}
    assert found.keys() == {256, 1310719}
    assert found[256][:3] == b"mid" and found[1310719][-1:] == b"e"


def _hashed_build(tree: Tree, out: Path, **options: object) -> NativeResult:
    with ImageOutput(out) as image:
        result = write_image(tree.entries, tree.content, image.fd,
                             Ext4Options(**options), seed="hashed",  # type: ignore[arg-type]
                             hash_path=image.path)
        image.publish()
    return result


def _no_process(*args: object, **kwargs: object) -> None:
    raise PermissionError(13, "Permission denied")


@pytest.mark.parametrize("helper", ["copy-helper", "no-interpreter", "cannot-start"])
def test_the_hash_taken_beside_the_copy_is_the_files(
        kinds: Tree, tmp_path: Path, helper: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The sha256 hashed while the copy runs (copied data read from the content files,
    whether the helper or this process copies) is the finished file's, here across a
    sparse-content retry and 80 MiB of data between small and large files."""
    if helper == "no-interpreter":
        monkeypatch.setattr(sys, "executable", "")
    elif helper == "cannot-start":                  # as uid nobody, where it cannot run
        monkeypatch.setattr("pipeline.ext4.native.copyproc.subprocess.Popen", _no_process)
    b = TreeBuilder(tmp_path / "store")
    rng = random.Random(7)
    b.dir("small")
    b.dir("large")
    for i in range(400):
        b.file(f"small/{i:03d}", rng.randbytes(rng.randrange(1, 100_000)))
        if i % 50 == 0:
            b.file(f"large/{i:03d}", rng.randbytes(6 << 20))
    b.file("sparse", size=40 << 20, holes=[(5 << 20, b"x" * 9000), ((40 << 20) - 3, b"end")])
    for tree, name in ((b.build(), "mixed"), (kinds, "kinds")):
        out = tmp_path / f"{name}.ext4"
        result = _hashed_build(tree, out)
        assert result.sha256 == hashlib.sha256(out.read_bytes()).hexdigest(), name
        assert result.timings["hash"] >= 0
    unhashed = write_ext4(kinds.entries, kinds.content, tmp_path / "plain.ext4",
                          Ext4Options(), seed="hashed")
    assert unhashed.sha256 == "" and "hash" not in unhashed.timings
    assert (tmp_path / "plain.ext4").read_bytes() == (tmp_path / "kinds.ext4").read_bytes()


def test_a_failed_copy_stops_the_hash(tmp_path: Path) -> None:
    """Content that disagrees with its entry fails the copy; the hash following it
    stops and the error is the copy's (no hang, nothing left)."""
    b = TreeBuilder(tmp_path / "store")
    b.file("big", bytes(40 << 20))
    b.file("bad", b"12345")
    tree = b.build()
    bad = tree.content(next(e for e in tree.entries if e.path == "bad"))
    assert bad is not None
    os.chmod(bad[0], 0o644)
    with open(bad[0], "ab") as f:
        f.write(b"6")
    out = tmp_path / "o" / "x.ext4"
    with pytest.raises(BadTree, match="holds 6 bytes, the entry declares 5"):
        _hashed_build(tree, out)
    assert os.listdir(tmp_path / "o") == []
