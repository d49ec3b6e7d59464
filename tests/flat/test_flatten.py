"""pipeline.flat.flatten: OCI layer semantics on the in-memory tree, exact trees or exact errors.

Layers are real blobs (harness vocabulary) unpacked into real stores; each case
compares the whole resulting tree, rendered by :func:`show`. The last test
reruns this module and test_staging.py as an unprivileged user.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.errors import (
    BadHardLink,
    LayerError,
    ParentNotDirectory,
    RootTypeChange,
    TooManySymlinks,
    UnsafeLayerEntry,
)
from pipeline.flat.flatten import flatten
from pipeline.flat.image import FileType
from pipeline.flat.tree import Tree
from pipeline.layers.store import LayerStore
from tests.harness.images import (
    Member,
    blockdev,
    chardev,
    dir,
    fifo,
    file,
    hardlink,
    make_layer,
    opaque,
    raw,
    symlink,
    whiteout,
)
from tests.layers.test_unpack import info, unpack

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534


def stores(tmp_path: Path, *layers: Sequence[Member], compression: str = "gzip"
           ) -> list[LayerStore]:
    return [unpack(tmp_path, make_layer(m, compression=compression)) for m in layers]


def show(tree: Tree) -> dict[str, str]:
    """Every entry but the root as one readable line; ``#n`` marks shared inodes."""
    groups: dict[int, int] = {}
    out: dict[str, str] = {}
    for path, node in tree.walk():
        if not path:
            continue
        owner = f"{node.mode:04o} {node.uid}:{node.gid}"
        if node.type is FileType.DIRECTORY:
            line = f"d {owner}"
        elif node.type is FileType.REGULAR:
            data = b""
            if node.content is not None:
                store, content = node.content
                data = store.read_content(content, node.size)
            assert len(data) == node.size
            line = f"f {owner} {data.decode()!r}"
        elif node.type is FileType.SYMLINK:
            line = f"l {node.target}"
        elif node.type in (FileType.CHAR, FileType.BLOCK):
            assert node.rdev is not None
            line = f"{node.type.value} {node.rdev[0]},{node.rdev[1]} {owner}"
        else:
            line = f"p {owner}"
        if node.xattrs:
            line += " " + " ".join(f"{k}={v.hex()}" for k, v in node.xattrs)
        if node.nlink > 1:
            line += f" #{groups.setdefault(id(node), len(groups) + 1)}"
        out[path] = line
    return out


def flat(tmp_path: Path, *layers: Sequence[Member], **kw: object) -> dict[str, str]:
    return show(flatten(stores(tmp_path, *layers, **kw)))  # type: ignore[arg-type]


def flat_error(tmp_path: Path, *layers: Sequence[Member]) -> LayerError:
    built = stores(tmp_path, *layers)
    with pytest.raises(LayerError) as err:
        flatten(built)
    return err.value


D = "d 0755 0:0"


def F(data: str, mode: str = "0644", owner: str = "0:0") -> str:  # noqa: N802
    return f"f {mode} {owner} {data!r}"


# --- whiteouts -------------------------------------------------------------------------


@pytest.mark.parametrize(("upper", "expected"), [
    ([whiteout("file")], {"dir": D, "dir/a": F("a"), "dir/b": F("b"), "keep": F("k")}),
    ([whiteout("dir/a")], {"dir": D, "dir/b": F("b"), "file": F("f"), "keep": F("k")}),
    ([whiteout("dir")], {"file": F("f"), "keep": F("k")}),
    ([whiteout("missing"), whiteout("dir/missing"), whiteout("nodir/x"), whiteout("file/x")],
     {"dir": D, "dir/a": F("a"), "dir/b": F("b"), "file": F("f"), "keep": F("k")}),
    ([opaque("dir")], {"dir": D, "file": F("f"), "keep": F("k")}),
    ([opaque("dir"), file("dir/new", b"n")],
     {"dir": D, "dir/new": F("n"), "file": F("f"), "keep": F("k")}),
    ([file("dir/new", b"n"), opaque("dir")],
     {"dir": D, "dir/new": F("n"), "file": F("f"), "keep": F("k")}),
    ([opaque(""), file("keep", b"K")], {"keep": F("K")}),
    ([file("keep", b"K"), opaque("")], {"keep": F("K")}),
    ([file("file", b"F"), whiteout("file")],
     {"dir": D, "dir/a": F("a"), "dir/b": F("b"), "file": F("F"), "keep": F("k")}),
    ([whiteout("file"), file("file", b"F")],
     {"dir": D, "dir/a": F("a"), "dir/b": F("b"), "file": F("F"), "keep": F("k")}),
    ([file("dir/c", b"c"), whiteout("dir")],
     {"dir": D, "dir/c": F("c"), "file": F("f"), "keep": F("k")}),
    ([whiteout("dir"), file("dir/c", b"c")],
     {"dir": D, "dir/c": F("c"), "file": F("f"), "keep": F("k")}),
    ([opaque("file")], {"dir": D, "dir/a": F("a"), "dir/b": F("b"), "file": F("f"),
                        "keep": F("k")}),
], ids=["file", "nested", "dir", "missing-is-noop", "opaque", "opaque-then-own",
        "own-then-opaque", "opaque-root", "own-then-opaque-root", "own-then-whiteout",
        "whiteout-then-own", "own-child-then-whiteout-dir", "whiteout-dir-then-own-child",
        "opaque-on-file-is-noop"])
def test_whiteouts_remove_only_lower_entries(tmp_path: Path, upper: list[Member],
                                             expected: dict[str, str]) -> None:
    lower = [dir("dir"), file("dir/a", b"a"), file("dir/b", b"b"), file("file", b"f"),
             file("keep", b"k")]
    assert flat(tmp_path, lower, upper) == expected


def test_opaque_reaches_into_kept_subdirectories(tmp_path: Path) -> None:
    # The upper layer writes dir/sub/new: dir and dir/sub survive as its ancestors, but
    # every lower entry below dir is hidden, as in overlayfs (and umoci).
    lower = [dir("dir"), dir("dir/sub", mode=0o700), file("dir/sub/old", b"o"),
             file("dir/other", b"x")]
    upper = [file("dir/sub/new", b"n"), opaque("dir")]
    assert flat(tmp_path, lower, upper) == {"dir": D, "dir/sub": "d 0700 0:0",
                                            "dir/sub/new": F("n")}


def test_whiteouts_in_a_third_layer_hide_the_second(tmp_path: Path) -> None:
    assert flat(tmp_path, [file("a", b"1")], [file("a", b"2"), file("b", b"2")],
                [whiteout("a")]) == {"b": F("2")}


def test_whiteout_through_a_symlinked_parent(tmp_path: Path) -> None:
    lower = [dir("real"), file("real/x", b"x"), file("real/y", b"y"), symlink("link", "/real")]
    assert flat(tmp_path, lower, [whiteout("link/x"), opaque("link")]) == {
        "link": "l /real", "real": D}


def test_whiteout_hides_the_link_not_its_target(tmp_path: Path) -> None:
    lower = [dir("real"), file("real/x", b"x"), symlink("link", "real")]
    assert flat(tmp_path, lower, [whiteout("link")]) == {"real": D, "real/x": F("x")}


def test_no_whiteout_names_remain(tmp_path: Path) -> None:
    tree = flat(tmp_path, [dir("d"), file("d/a", b"a")],
                [whiteout("d/a"), whiteout("nothing"), opaque("d"), opaque("x/y")])
    assert not [p for p in tree if ".wh." in p]
    assert tree == {"d": D}


# --- merging, replacing, parents -------------------------------------------------------------


def test_missing_parents_are_created_root_owned(tmp_path: Path) -> None:
    tree = flatten(stores(tmp_path, [file("a/b/c", b"c", uid=5)]))
    assert show(tree) == {"a": D, "a/b": D, "a/b/c": F("c", owner="5:0")}
    created = tree.lookup(["a", "b"])
    assert created is not None and created.mtime_ns == 0


def test_directory_over_directory_merges_metadata(tmp_path: Path) -> None:
    tree = flatten(stores(tmp_path, [dir("d", mode=0o700, xattrs={"user.a": b"1"}),
                                     file("d/x", b"x")],
                          [dir("d", mode=0o1777, uid=3, gid=4, xattrs={"user.b": b"2"},
                               mtime=1234)]))
    assert show(tree) == {"d": "d 1777 3:4 user.b=32", "d/x": F("x")}
    d = tree.lookup(["d"])
    assert d is not None and d.mtime_ns == 1234 * 10**9


def test_root_entry_sets_root_metadata(tmp_path: Path) -> None:
    tree = flatten(stores(tmp_path, [dir(".", mode=0o700, uid=1), file("x")]))
    assert (tree.root.mode, tree.root.uid) == (0o700, 1)


@pytest.mark.parametrize(("upper", "expected"), [
    ([file("d", b"now a file")], {"d": F("now a file"), "s": "l d", "f": F("f")}),
    ([symlink("d", "/f")], {"d": "l /f", "s": "l d", "f": F("f")}),
    ([dir("f"), file("f/inner", b"i")],
     {"d": D, "d/x": F("x"), "f": D, "f/inner": F("i"), "s": "l d"}),
    ([dir("s"), file("s/y", b"y")], {"d": D, "d/x": F("x"), "f": F("f"), "s": D, "s/y": F("y")}),
    ([fifo("f")], {"d": D, "d/x": F("x"), "f": "p 0644 0:0", "s": "l d"}),
    ([file("f", b"1"), file("f", b"2"), dir("f"), file("f", b"3")],
     {"d": D, "d/x": F("x"), "f": F("3"), "s": "l d"}),
], ids=["dir-to-file", "dir-to-symlink", "file-to-dir", "symlink-to-dir", "file-to-fifo",
        "duplicates-last-wins"])
def test_type_changes_replace(tmp_path: Path, upper: list[Member],
                              expected: dict[str, str]) -> None:
    lower = [dir("d"), file("d/x", b"x"), file("f", b"f"), symlink("s", "d")]
    assert flat(tmp_path, lower, upper) == expected


@pytest.mark.parametrize("member", [file(".", b"x"), symlink("./", "/tmp"),
                                    hardlink("", "a"), fifo("/")],
                         ids=["file", "symlink", "hardlink", "fifo"])
def test_root_type_change_is_refused(tmp_path: Path, member: Member) -> None:
    err = flat_error(tmp_path, [file("a")], [member])
    assert isinstance(err, RootTypeChange) and isinstance(err, UnsafeLayerEntry)
    assert "refusing to change the type of the root directory" in str(err)


# --- symlinks --------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/tmp", "../../../tmp", "../tmp", "/../../tmp/",
                                    "/usr/../../tmp", "missing/../../tmp/."])
def test_writes_through_symlinks_stay_inside(tmp_path: Path, target: str) -> None:
    assert flat(tmp_path, [symlink("etc", target)], [file("etc/passwd", b"pw")]) == {
        "etc": f"l {target}", "tmp": D, "tmp/passwd": F("pw")}


def test_symlink_through_itself_is_a_loop(tmp_path: Path) -> None:
    err = flat_error(tmp_path, [symlink("etc", "/etc/../../tmp")], [file("etc/passwd")])
    assert isinstance(err, TooManySymlinks)


def test_entry_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    assert flat(tmp_path, [dir("real"), symlink("etc", "real")],
                [file("etc", b"replaced")]) == {"etc": F("replaced"), "real": D}


def test_symlink_loop_is_refused(tmp_path: Path) -> None:
    err = flat_error(tmp_path, [symlink("a", "b"), symlink("b", "/a")], [file("a/x")])
    assert isinstance(err, TooManySymlinks)
    assert str(err).endswith("entry 'a/x': more than 40 symlinks while resolving 'a' (a"
                             " symlink loop)")


def test_parent_that_is_a_file(tmp_path: Path) -> None:
    err = flat_error(tmp_path, [file("f", b"x"), symlink("l", "f")], [file("l/x")])
    assert isinstance(err, ParentNotDirectory)
    assert str(err).endswith("entry 'l/x': cannot place this entry: 'f' is a regular, not a"
                             " directory, while resolving 'l'; the layer conflicts with the"
                             " layers below it")


# --- hard links -------------------------------------------------------------------------------


def test_hard_links_share_an_inode(tmp_path: Path) -> None:
    tree = flatten(stores(tmp_path, [file("a", b"data", mode=0o4755, uid=7),
                                     hardlink("b", "a")],
                          [hardlink("c", "/a"), hardlink("d/e", "b")]))
    assert show(tree) == {"a": F("data", "4755", "7:0") + " #1",
                          "b": F("data", "4755", "7:0") + " #1",
                          "c": F("data", "4755", "7:0") + " #1", "d": D,
                          "d/e": F("data", "4755", "7:0") + " #1"}
    a = tree.lookup(["a"])
    assert a is not None and a.nlink == 4 and tree.lookup(["d", "e"]) is a


def test_replacing_one_name_leaves_the_other(tmp_path: Path) -> None:
    assert flat(tmp_path, [file("a", b"old"), hardlink("b", "a")], [file("a", b"new")]) == {
        "a": F("new"), "b": F("old")}


def test_whiteout_of_one_name_leaves_the_other(tmp_path: Path) -> None:
    assert flat(tmp_path, [file("a", b"x"), hardlink("b", "a")], [whiteout("a")]) == {
        "b": F("x")}


def test_hard_link_through_a_symlinked_directory(tmp_path: Path) -> None:
    assert flat(tmp_path, [dir("usr/bin"), file("usr/bin/perl", b"p"), symlink("bin", "usr/bin")],
                [hardlink("perl2", "bin/perl")]) == {
        "bin": "l usr/bin", "perl2": F("p") + " #1", "usr": D, "usr/bin": D,
        "usr/bin/perl": F("p") + " #1"}


def test_hard_links_to_other_kinds_become_copies(tmp_path: Path) -> None:
    assert flat(tmp_path, [symlink("s", "/x"), chardev("c", 1, 3), fifo("p")],
                [hardlink("s2", "s"), hardlink("c2", "c"), hardlink("p2", "p")]) == {
        "c": "c 1,3 0666 0:0", "c2": "c 1,3 0666 0:0", "p": "p 0644 0:0", "p2": "p 0644 0:0",
        "s": "l /x", "s2": "l /x"}


def test_hard_link_to_itself_is_harmless(tmp_path: Path) -> None:
    assert flat(tmp_path, [file("a", b"x")], [hardlink("a", "a")]) == {"a": F("x")}


@pytest.mark.parametrize(("layers", "target", "why"), [
    ([[file("x")], [hardlink("h", "missing")]], "missing", "is not in the tree"),
    ([[file("a", b"x")], [whiteout("a")], [hardlink("h", "a")]], "a", "is not in the tree"),
    ([[file("a", b"x"), whiteout("a")], [hardlink("h", "a")]], "a", "ok"),
    ([[dir("d")], [hardlink("h", "d")]], "d", "is a directory"),
    ([[file("a")], [hardlink("h", "/")]], "", "is a directory"),
    ([[hardlink("h", "later"), file("later")]], "later", "is not in the tree"),
    ([[file("f")], [hardlink("h", "f/x")]], "f/x", "is not in the tree"),
    ([[symlink("l", "/"), file("a")], [hardlink("h", "l")]], "l", "ok"),
], ids=["missing", "whited-out", "same-layer-whiteout-keeps-it", "directory", "root",
        "later-in-layer", "below-a-file", "to-symlink-copies"])
def test_hard_link_targets(tmp_path: Path, layers: list[list[Member]], target: str,
                           why: str) -> None:
    built = stores(tmp_path, *layers)
    if why == "ok":
        assert show(flatten(built))["h"]
        return
    with pytest.raises(BadHardLink) as err:
        flatten(built)
    assert str(err.value).startswith(f"layer {built[-1].digest}, entry 'h': hard link target"
                                     f" {target!r} {why}")


# --- devices, modes, owners ------------------------------------------------------------------


def test_special_files_modes_and_owners(tmp_path: Path) -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    assert flat(tmp_path, [
        chardev("dev/null", 1, 3), blockdev("dev/sda", 8, 0), fifo("run/ctl", mode=0o600),
        file("bin/su", b"s", mode=0o4755), file("bin/wall", b"w", mode=0o2755, gid=5),
        dir("tmp", mode=0o1777), file("u1000", b"", uid=1000, gid=1000),
        file("u100000", b"", uid=100000, gid=100000),
        file("ping", b"p", mode=0o755, xattrs={"security.capability": cap})]) == {
        "bin": D, "bin/su": F("s", "4755"), "bin/wall": F("w", "2755", "0:5"), "dev": D,
        "dev/null": "c 1,3 0666 0:0", "dev/sda": "b 8,0 0660 0:0",
        "ping": F("p", "0755") + " security.capability=" + cap.hex(),
        "run": D, "run/ctl": "p 0600 0:0", "tmp": "d 1777 0:0",
        "u1000": F("", owner="1000:1000"), "u100000": F("", owner="100000:100000")}


def test_same_result_from_every_compression(tmp_path: Path) -> None:
    layers = [[dir("a"), file("a/x", b"1"), symlink("b", "a")], [file("b/y", b"2"),
                                                                  whiteout("a/x")]]
    results = {c: flat(tmp_path / c, *layers, compression=c) for c in ("gzip", "zstd", "none")}
    assert results["gzip"] == results["zstd"] == results["none"] == {
        "a": D, "a/y": F("2"), "b": "l a"}


def test_names_with_odd_bytes(tmp_path: Path) -> None:
    name = b"d/\xff\n name".decode("utf-8", "surrogateescape")
    tree = flat(tmp_path, [raw(info(name, size=1), b"x")])
    assert tree == {"d": D, name: F("x")}


# --- unprivileged ------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) missing")
def test_flatten_and_staging_pass_unprivileged() -> None:
    """Rerun this module and test_staging.py as uid/gid 65534 in a world-readable place."""
    work = Path(tempfile.mkdtemp(prefix="rootfs-unpriv-"))
    try:
        os.chown(work, NOBODY, NOBODY)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work),
               "PYTHONDONTWRITEBYTECODE": "1", "TMPDIR": str(work), "LC_ALL": "C.UTF-8"}
        as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
                     sys.executable]
        who = subprocess.run([*as_nobody, "-c", "import os; print(os.geteuid(), os.getegid())"],
                             cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        assert who.stdout.split() == [str(NOBODY), str(NOBODY)]
        result = subprocess.run(
            [*as_nobody, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--basetemp={work / 'bt'}", "-k", "not unprivileged",
             "tests/flat/test_flatten.py", "tests/flat/test_staging.py"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        passed = re.search(r"(\d+) passed", result.stdout)
        assert passed is not None and int(passed.group(1)) >= 60, result.stdout[-3000:]
    finally:
        shutil.rmtree(work, ignore_errors=True)
