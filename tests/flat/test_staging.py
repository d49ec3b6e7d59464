"""pipeline.flat.staging: the flat image directory (staging tree + entries.jsonl + header)."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pipeline.flat.flatten import flatten
from pipeline.flat.image import (
    HEADER_NAME,
    FileType,
    FlatEntry,
    chain_key,
    is_current,
    read_entries,
    read_header,
)
from pipeline.flat.lookup import content_files
from pipeline.flat.staging import flatten_image, materialize
from pipeline.layers.extracted import FILES_DIR, extracted_files
from pipeline.layers.store import MARKER_NAME, LayerStore
from tests.harness.ext4reader import Ext4Image
from tests.harness.images import (
    Member,
    blockdev,
    chardev,
    dir,
    fifo,
    file,
    hardlink,
    make_layer,
    symlink,
    whiteout,
)
from tests.harness.tarball import MTIME
from tests.layers.test_unpack import unpack

T = MTIME * 10**9


def stores(tmp_path: Path, *layers: list[Member]) -> list[LayerStore]:
    return [unpack(tmp_path, make_layer(m)) for m in layers]


def build(tmp_path: Path, *layers: list[Member]) -> Path:
    return flatten_image(stores(tmp_path, *layers), tmp_path / "flat")


def host(flat: Path, path: str) -> os.stat_result:
    return os.lstat(flat / "rootfs" / path)


def test_layout_atomic_and_private(tmp_path: Path) -> None:
    built = stores(tmp_path, [file("a", b"x")])
    flat = flatten_image(built, tmp_path / "flat")
    assert flat == tmp_path / "flat" / chain_key([built[0].digest])
    assert sorted(p.name for p in flat.iterdir()) == ["entries.jsonl", HEADER_NAME, "rootfs"]
    assert [p.name for p in (tmp_path / "flat").iterdir()] == [flat.name]  # no .tmp-* left
    assert stat.S_IMODE(flat.stat().st_mode) == 0o700
    assert stat.S_IMODE((flat / "rootfs").stat().st_mode) == 0o700
    header = read_header(flat / HEADER_NAME)
    assert (header.chain, header.entries, header.inodes, header.directories,
            header.regular_bytes) == ((built[0].digest,), 2, 2, 1, 1)


def test_finished_flat_image_is_reused(tmp_path: Path) -> None:
    built = stores(tmp_path, [file("a", b"x")])
    flat = flatten_image(built, tmp_path / "flat")
    inode = (flat / "entries.jsonl").stat().st_ino
    assert flatten_image(built, tmp_path / "flat") == flat
    assert (flat / "entries.jsonl").stat().st_ino == inode


def test_materialize_racing_a_finished_twin_keeps_the_first(tmp_path: Path) -> None:
    built = stores(tmp_path, [file("a", b"x")])
    flat = flatten_image(built, tmp_path / "flat")
    inode = (flat / "entries.jsonl").stat().st_ino
    assert materialize(flatten(built), flat, [built[0].digest]) == flat
    assert (flat / "entries.jsonl").stat().st_ino == inode
    assert [p.name for p in (tmp_path / "flat").iterdir()] == [flat.name]


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    built = stores(tmp_path, [file("a", b"x"), file("b", b"y")])
    tree = flatten(built)
    built[0].pack_path.unlink()
    with pytest.raises(FileNotFoundError):
        materialize(tree, tmp_path / "flat" / "x", [built[0].digest])
    assert list((tmp_path / "flat").iterdir()) == []


def test_files_are_hard_links_to_the_extracted_store_files(tmp_path: Path) -> None:
    big = os.urandom(1 << 20)
    built = stores(tmp_path, [file("usr/bin/su", b"ELF", mode=0o4755, uid=3),
                              file("big", big)])
    flat = flatten_image(built, tmp_path / "flat")
    files = built[0].root / FILES_DIR
    assert sorted(os.listdir(files)) == ["0", "3"]      # offsets in the pack
    for path, data, name in (("usr/bin/su", b"ELF", "0"), ("big", big, "3")):
        st, src = host(flat, path), (files / name).stat()
        assert (st.st_dev, st.st_ino) == (src.st_dev, src.st_ino)
        assert (flat / "rootfs" / path).read_bytes() == data
        assert st.st_nlink == 2
        assert stat.S_IMODE(st.st_mode) == 0o444 and st.st_uid == os.geteuid()


def test_a_store_used_only_without_staging_is_never_extracted(tmp_path: Path) -> None:
    built = stores(tmp_path, [file("a", b"x")])
    flatten_image(built, tmp_path / "flat", staging=False)
    assert sorted(p.name for p in built[0].root.iterdir()) == ["content", "index.jsonl",
                                                               MARKER_NAME]


def test_concurrent_extractions_make_one_directory(tmp_path: Path) -> None:
    built = stores(tmp_path, [file(f"f{i}", os.urandom(i * 100)) for i in range(1, 40)])
    with ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: extracted_files(built[0]), range(8)))
    assert set(made) == {built[0].root / FILES_DIR}
    assert sorted(p.name for p in built[0].root.iterdir()) == [
        "content", "files", "index.jsonl", MARKER_NAME]     # no temporary left
    for entry in built[0].entries():
        assert (made[0] / str(entry.content)).read_bytes() == built[0].read_content(
            entry.content or 0, entry.size)


def test_host_inodes_are_shared_exactly_like_image_inodes(tmp_path: Path) -> None:
    # a/b are one image inode; c has the same bytes but is its own inode; e/f share an
    # empty inode; g is empty and alone.
    flat = build(tmp_path, [file("a", b"same"), hardlink("b", "a"), file("c", b"same"),
                            file("e"), hardlink("f", "e"), file("g")])
    ino = {p: host(flat, p).st_ino for p in "abcefg"}
    assert ino["a"] == ino["b"] and ino["e"] == ino["f"]
    assert len({ino["a"], ino["c"], ino["e"], ino["g"]}) == 4
    assert host(flat, "e").st_nlink == 2 and host(flat, "g").st_nlink == 1
    groups = {e.path: e.link_group for e in read_entries(flat / "entries.jsonl")}
    assert groups == {"": None, "a": 1, "b": 1, "c": None, "e": 2, "f": 2, "g": None}


def test_store_file_reused_by_two_image_inodes_is_copied(tmp_path: Path) -> None:
    # Layers A, B, A: the second A makes a new inode for x from the same store file
    # that y (hard-linked to the first x in B) still uses.
    layer_a = make_layer([file("x", b"shared bytes")])
    layer_b = make_layer([hardlink("y", "x")])
    a, b = unpack(tmp_path, layer_a), unpack(tmp_path, layer_b)
    flat = flatten_image([a, b, a], tmp_path / "flat")
    x, y = host(flat, "x"), host(flat, "y")
    assert x.st_ino != y.st_ino
    assert {x.st_ino, y.st_ino} & {(a.root / FILES_DIR / "0").stat().st_ino}
    assert (flat / "rootfs/x").read_bytes() == (flat / "rootfs/y").read_bytes() == b"shared bytes"
    assert all(e.link_group is None for e in read_entries(flat / "entries.jsonl"))


def test_special_files_on_the_host(tmp_path: Path) -> None:
    flat = build(tmp_path, [chardev("dev/null", 1, 3), blockdev("dev/sda", 8, 0),
                            fifo("run/ctl", mode=0o600), symlink("etc/passwd", "/etc/shadow"),
                            symlink("up", "../../../../outside"), dir("tmp", mode=0o1777),
                            file("su", b"x", mode=0o6755, uid=0, gid=0)])
    for dev in ("dev/null", "dev/sda"):
        st = host(flat, dev)
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0 and st.st_rdev == 0
    assert stat.S_ISFIFO(host(flat, "run/ctl").st_mode)
    assert os.readlink(flat / "rootfs/etc/passwd") == "/etc/shadow"
    assert os.readlink(flat / "rootfs/up") == "../../../../outside"
    for root, dirs, files in os.walk(flat / "rootfs"):
        for name in dirs + files:
            st = os.lstat(Path(root) / name)
            assert not st.st_mode & 0o7000, name  # no setuid/setgid/sticky on the host
            assert st.st_uid == os.geteuid()


def test_entries_carry_the_image_metadata_in_mkfs_order(tmp_path: Path) -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    flat = build(tmp_path, [
        dir("b", mode=0o700, uid=1, gid=2), file("b/z", b"zz", mode=0o4755),
        file("b/a", b"a", uid=100000), symlink("a-b", "b"), chardev("a/c", 5, 1, mode=0o600),
        fifo("a/p"), hardlink("b/h", "b/z"),
        file("ping", b"p", xattrs={"security.capability": cap}), dir("B")], [whiteout("b/a")])
    got = list(read_entries(flat / "entries.jsonl"))
    assert got == [
        FlatEntry("", FileType.DIRECTORY, 0o755, 0, 0, 0),
        FlatEntry("B", FileType.DIRECTORY, 0o755, 0, 0, T),
        FlatEntry("a", FileType.DIRECTORY, 0o755, 0, 0, 0),
        FlatEntry("a/c", FileType.CHAR, 0o600, 0, 0, T, rdev=(5, 1)),
        FlatEntry("a/p", FileType.FIFO, 0o644, 0, 0, T),
        FlatEntry("a-b", FileType.SYMLINK, 0o777, 0, 0, T, target="b"),
        FlatEntry("b", FileType.DIRECTORY, 0o700, 1, 2, T),
        FlatEntry("b/h", FileType.REGULAR, 0o4755, 0, 0, T, size=2, link_group=1,
                  content=(0, 0)),
        FlatEntry("b/z", FileType.REGULAR, 0o4755, 0, 0, T, size=2, link_group=1,
                  content=(0, 0)),
        FlatEntry("ping", FileType.REGULAR, 0o644, 0, 0, T,
                  xattrs=(("security.capability", cap),), size=1, content=(0, 3)),
    ]
    header = read_header(flat / HEADER_NAME)
    assert (header.entries, header.inodes, header.directories, header.regular_bytes) == (
        10, 9, 4, 3)


def test_odd_names_reach_the_host_as_bytes(tmp_path: Path) -> None:
    from tests.harness.images import raw
    from tests.layers.test_unpack import info
    name = b"d/\xff\n \\ 'x'".decode("utf-8", "surrogateescape")
    flat = build(tmp_path, [raw(info(name, size=1), b"x")])
    assert os.listdir(os.fsencode(flat / "rootfs" / "d")) == [b"\xff\n \\ 'x'"]
    assert [e.path for e in read_entries(flat / "entries.jsonl")] == ["", "d", name]


def test_victim_beside_the_build_is_untouched(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "file").write_bytes(b"precious")
    build(tmp_path, [symlink("etc", str(victim)), symlink("v", "../victim")],
          [file("etc/file", b"overwritten?"), file("v/new", b"created?")])
    assert sorted(os.listdir(victim)) == ["file"]
    assert (victim / "file").read_bytes() == b"precious"


@pytest.mark.skipif(shutil.which("mkfs.ext4") is None, reason="e2fsprogs missing")
def test_mkfs_sees_exactly_the_image_hard_links(tmp_path: Path) -> None:
    """mkfs.ext4 -d detects hard links by host inode: check it finds ours and no others."""
    flat = build(tmp_path, [file("a", b"1"), hardlink("b", "a"), file("c", b"1"),
                            file("d"), file("e"), hardlink("f", "e")])
    image = tmp_path / "fs.ext4"
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(flat / "rootfs"), str(image), "4M"],
                   check=True, env={**os.environ, "LC_ALL": "C"})
    with Ext4Image(image) as fs:
        nodes = fs.walk()
    ino = {p: nodes[p].ino for p in ("a", "b", "c", "d", "e", "f")}
    assert ino["a"] == ino["b"] and ino["e"] == ino["f"]
    assert len({ino["a"], ino["c"], ino["d"], ino["e"]}) == 4
    assert (nodes["a"].nlink, nodes["c"].nlink, nodes["e"].nlink) == (2, 1, 2)


def test_flat_on_another_filesystem_copies(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's tmp_path")
    built = stores(tmp_path, [file("a", b"linked"), hardlink("b", "a"), file("c", b"alone")])
    with tempfile.TemporaryDirectory(dir=shm) as other:
        flat = flatten_image(built, Path(other) / "flat")
        a, b, c = (host(flat, p) for p in "abc")
        assert a.st_ino == b.st_ino and a.st_nlink == 2 and c.st_nlink == 1
        assert a.st_dev != built[0].pack_path.stat().st_dev
        assert (flat / "rootfs/b").read_bytes() == b"linked"
        assert (flat / "rootfs/c").read_bytes() == b"alone"
        assert sorted(os.listdir(flat)) == ["entries.jsonl", HEADER_NAME, "rootfs"]


# -- without a staging tree (the native builder) -----------------------------------------


def test_content_references_name_the_pack_range_of_every_regular_entry(
        tmp_path: Path) -> None:
    # Layers A, B, A: x's reference may name either position of A; both hold its bytes.
    layer_a = make_layer([file("x", b"shared bytes"), file("empty"), dir("d")])
    layer_b = make_layer([file("y", b"from b"), hardlink("z", "y")])
    a, b = unpack(tmp_path, layer_a), unpack(tmp_path, layer_b)
    flat = flatten_image([a, b, a], tmp_path / "flat", staging=False)
    assert sorted(p.name for p in flat.iterdir()) == ["entries.jsonl", HEADER_NAME]
    content = content_files(tmp_path / "layers", read_header(flat / HEADER_NAME).chain)
    got = {}
    for entry in read_entries(flat / "entries.jsonl"):
        source = content(entry)
        if source is not None:
            pack, offset = source
            assert pack == str(a.pack_path if entry.path == "x" else b.pack_path)
            with open(pack, "rb") as f:
                got[entry.path] = os.pread(f.fileno(), entry.size, offset or 0)
        else:
            got[entry.path] = None
    assert got == {"": None, "d": None, "empty": None, "x": b"shared bytes", "y": b"from b",
                   "z": b"from b"}


def test_staging_is_added_to_a_flat_image_made_without_one(tmp_path: Path) -> None:
    built = stores(tmp_path, [file("a", b"x"), hardlink("b", "a"), symlink("c", "a")])
    flat = flatten_image(built, tmp_path / "flat", staging=False)
    entries = (flat / "entries.jsonl").read_bytes()
    assert not (flat / "rootfs").exists()
    assert flatten_image(built, tmp_path / "flat", staging=False) == flat
    assert not (flat / "rootfs").exists()
    assert flatten_image(built, tmp_path / "flat") == flat
    assert (flat / "rootfs/a").read_bytes() == b"x" and os.readlink(flat / "rootfs/c") == "a"
    assert host(flat, "a").st_ino == host(flat, "b").st_ino
    assert (flat / "entries.jsonl").read_bytes() == entries
    assert [p.name for p in (tmp_path / "flat").iterdir()] == [flat.name]  # no .tmp-* left


def test_a_flat_image_of_an_older_format_is_made_again(tmp_path: Path) -> None:
    built = stores(tmp_path, [file("a", b"x")])
    flat = flatten_image(built, tmp_path / "flat", staging=False)
    # What version 1 left: its header under the old name, no content references.
    (flat / HEADER_NAME).rename(flat / "flat.json")
    assert not is_current(flat)
    assert flatten_image(built, tmp_path / "flat", staging=False) == flat
    assert is_current(flat)
