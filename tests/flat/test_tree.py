"""pipeline.flat.tree: in-tree symlink resolution (chroot semantics), lookup, walk order."""

from __future__ import annotations

import os

import pytest

from pipeline.flat.image import FileType
from pipeline.flat.tree import (
    MAX_SYMLINK_FOLLOWS,
    Inode,
    NotADirectoryInTree,
    SymlinkLoop,
    Tree,
    new_directory,
    unlink_subtree,
)


def put(tree: Tree, path: str, inode: Inode) -> Inode:
    *parents, name = path.split("/")
    found = tree.resolve_dir(parents, create=True)
    assert found is not None
    children = found[0][-1].children
    assert children is not None
    children[name] = inode
    inode.nlink += 1
    return inode


def link(target: str) -> Inode:
    return Inode(FileType.SYMLINK, mode=0o777, target=target)


def reg() -> Inode:
    return Inode(FileType.REGULAR, mode=0o644)


@pytest.fixture
def tree() -> Tree:
    t = Tree()
    put(t, "usr", new_directory())
    put(t, "usr/lib", new_directory())
    put(t, "tmp", new_directory(0o1777))
    put(t, "lib", link("usr/lib"))               # relative, usr-merge style
    put(t, "abs", link("/usr/lib"))              # absolute: re-rooted
    put(t, "usr/lib/up", link("../../../../../tmp"))  # climbs past the root
    put(t, "usr/lib/chain", link("/abs/../lib"))
    put(t, "file", reg())
    put(t, "dangling", link("/nonexistent/deeper"))
    put(t, "loop1", link("loop2"))
    put(t, "loop2", link("/loop1"))
    return t


def names_of(tree: Tree, path: str, *, create: bool = False) -> list[str] | None:
    found = tree.resolve_dir(path.split("/") if path else [], create=create)
    if found is None:
        return None
    dirs, names = found
    assert len(dirs) == len(names) + 1
    for i, name in enumerate(names):  # the chain is consistent
        assert dirs[i].children is not None and dirs[i].children[name] is dirs[i + 1]
    return names


@pytest.mark.parametrize(("path", "resolved"), [
    ("", []), ("usr", ["usr"]), ("usr/lib", ["usr", "lib"]), ("lib", ["usr", "lib"]),
    ("abs", ["usr", "lib"]), ("lib/up", ["tmp"]), ("abs/up", ["tmp"]),
    ("usr/lib/chain", ["usr", "lib"]), ("..", []), ("../../usr", ["usr"]),
    ("usr/../tmp", ["tmp"]), ("./usr/./lib/", ["usr", "lib"]), ("lib/../lib", ["usr", "lib"]),
], ids=lambda v: repr(v))
def test_resolution_stays_inside(tree: Tree, path: str, resolved: list[str]) -> None:
    assert names_of(tree, path) == resolved


def test_missing_is_none_unless_created(tree: Tree) -> None:
    assert names_of(tree, "usr/share/doc") is None
    assert names_of(tree, "dangling") is None
    assert names_of(tree, "dangling/x", create=True) == ["nonexistent", "deeper", "x"]
    created = tree.lookup(["nonexistent", "deeper"])
    assert created is not None and created.is_dir
    assert (created.mode, created.uid, created.gid, created.mtime_ns) == (0o755, 0, 0, 0)
    dangling = tree.lookup(["dangling"])
    assert dangling is not None and dangling.type is FileType.SYMLINK


def test_dotdot_below_a_missing_directory_is_lexical(tree: Tree) -> None:
    assert names_of(tree, "nothing/../usr", create=True) == ["usr"]
    assert names_of(tree, "nothing/deeper/../../tmp/new/..", create=True) == ["tmp"]
    assert tree.lookup(["nothing"]) is None and tree.lookup(["tmp", "new"]) is None
    assert names_of(tree, "dangling/../x", create=True) == ["nonexistent", "x"]


def test_loops_and_files_are_errors(tree: Tree) -> None:
    with pytest.raises(SymlinkLoop) as err:
        tree.resolve_dir(["loop1", "x"], create=True)
    assert str(err.value) == (f"more than {MAX_SYMLINK_FOLLOWS} symlinks while resolving"
                              " 'loop1/x'")
    with pytest.raises(NotADirectoryInTree) as nd:
        tree.resolve_dir(["file", "x"], create=True)
    assert str(nd.value) == "'file' is a regular, not a directory, while resolving 'file/x'"
    assert nd.value.path == "file"


def test_long_chains_below_the_limit_resolve() -> None:
    t = Tree()
    put(t, "target", new_directory())
    put(t, "l0", link("target"))
    for i in range(1, MAX_SYMLINK_FOLLOWS):
        put(t, f"l{i}", link(f"/l{i - 1}"))
    assert names_of(t, f"l{MAX_SYMLINK_FOLLOWS - 1}") == ["target"]
    put(t, f"l{MAX_SYMLINK_FOLLOWS}", link(f"l{MAX_SYMLINK_FOLLOWS - 1}"))
    with pytest.raises(SymlinkLoop):
        names_of(t, f"l{MAX_SYMLINK_FOLLOWS}")


def test_lookup_never_follows_the_last_component(tree: Tree) -> None:
    found = tree.lookup(["lib"])
    assert found is not None and found.type is FileType.SYMLINK
    through = tree.lookup(["lib", "up"])
    assert through is not None and through.target == "../../../../../tmp"
    assert tree.lookup([]) is tree.root
    assert tree.lookup(["nothing", "here"]) is None


def test_walk_is_preorder_in_byte_order() -> None:
    t = Tree()
    for path in ("b", "a-b", "a", "a/z", "a/y", "B", "\udcff", "é", "a/y/q"):
        put(t, path, new_directory() if path in ("a", "a/y") else reg())
    order = [p for p, _ in t.walk()]
    assert order == ["", "B", "a", "a/y", "a/y/q", "a/z", "a-b", "b", "é", "\udcff"]
    assert [os.fsencode(p.rpartition("/")[2]) for p in order[-2:]] == [b"\xc3\xa9", b"\xff"]


def test_unlink_subtree_counts_names() -> None:
    t = Tree()
    d = put(t, "d", new_directory())
    shared = put(t, "d/f", reg())
    put(t, "g", shared)
    assert shared.nlink == 2
    unlink_subtree(d)
    assert shared.nlink == 1 and d.nlink == 0


def test_upper_marks_are_per_layer() -> None:
    d = new_directory()
    d.mark_upper("a", 1)
    assert d.is_upper("a", 1) and not d.is_upper("b", 1) and not d.is_upper("a", 2)
    d.mark_upper("b", 2)
    assert d.is_upper("b", 2) and not d.is_upper("a", 2)


def test_directories_are_never_copied() -> None:
    with pytest.raises(AssertionError, match="internal error"):
        new_directory().copy()
    original = Inode(FileType.CHAR, mode=0o600, uid=5, rdev=(1, 3))
    copy = original.copy()
    assert copy is not original and (copy.type, copy.mode, copy.uid, copy.rdev) == (
        FileType.CHAR, 0o600, 5, (1, 3))
