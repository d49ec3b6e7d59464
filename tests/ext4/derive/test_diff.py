"""pipeline.ext4.derive.diff: the pure diff from a base tree P to an image tree C, and the
inode numbers it predicts for what it creates (no e2fsprogs here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from pipeline.ext4.derive.base import used_inodes
from pipeline.ext4.derive.diff import DeriveRefused, InodeAllocator, TreeDiff, diff_trees
from pipeline.ext4.inodes import predict_inodes
from pipeline.flat.image import ENTRIES_NAME, read_entries
from tests.ext4.test_build import Spec, d, f, hl, make_flat, sym

P: list[Spec] = [d("etc"), f("etc/a", b"a"), f("etc/b", b"b"), d("usr"), d("usr/lib"),
                 f("usr/lib/x", b"x"), f("usr/lib/y", b"y"), sym("lib", "usr/lib")]


def diff(tmp: Path, c: Sequence[Spec], p: Sequence[Spec] = P) -> TreeDiff:
    flat_p, flat_c = make_flat(tmp / "p", p), make_flat(tmp / "c", c)
    p_list = list(read_entries(flat_p / ENTRIES_NAME))
    c_list = list(read_entries(flat_c / ENTRIES_NAME))
    base = predict_inodes(p_list)
    allocator = InodeAllocator(used_inodes(base), per_group=8192, count=16384)
    return diff_trees(p_list, base, c_list, flat_p=flat_p, flat_c=flat_c, allocator=allocator)


def created(result: TreeDiff) -> list[tuple[str, int | str | None]]:
    return [(c.entry.path, c.link_to) for c in result.creations]


def test_the_same_tree_changes_nothing(tmp_path: Path) -> None:
    result = diff(tmp_path, P)
    assert (result.unlinks, result.frees, result.creations, result.changed) == ((), (), (), ())
    assert result.kept == frozenset(["", *(s.path for s in P)])


def test_metadata_alone_keeps_the_inode(tmp_path: Path) -> None:
    c = [s if s.path != "etc/a" else f("etc/a", b"a", 0o4755, uid=7) for s in P]
    assert diff(tmp_path, c).creations == ()


def test_new_content_is_a_new_inode_in_the_freed_slot(tmp_path: Path) -> None:
    c = [s if s.path != "etc/a" else f("etc/a", b"A") for s in P]
    result = diff(tmp_path, c)
    old = predict_inodes(list(read_entries(tmp_path / "p" / ENTRIES_NAME)))
    assert result.frees == (old["etc/a"],)
    assert result.unlinks == ((old["etc"], "etc/a"),)
    assert created(result) == [("etc/a", None)]
    # ext2fs_new_inode: the first free inode of the parent's group, the freed one.
    assert result.inodes["etc/a"] == old["etc/a"]
    assert result.changed == ("etc",)


def test_a_removed_directory_goes_with_its_subtree(tmp_path: Path) -> None:
    result = diff(tmp_path, [s for s in P if not s.path.startswith("usr")])
    old = predict_inodes(list(read_entries(tmp_path / "p" / ENTRIES_NAME)))
    assert result.unlinks == ((2, "usr"),)            # its children are not unlinked one by one
    assert sorted(result.frees) == sorted(old[p] for p in ("usr", "usr/lib", "usr/lib/x",
                                                            "usr/lib/y"))
    assert result.creations == ()


def test_type_changes_and_new_links(tmp_path: Path) -> None:
    c = [d("etc"), d("etc/a"), f("etc/a/inner", b"i"), f("etc/b", b"b"), d("usr"), d("usr/lib"),
         f("usr/lib/x", b"x"), f("usr/lib/y", b"y"), d("lib"), hl("etc/x-again", "usr/lib/x"),
         f("new", b"n"), hl("new-link", "new")]
    result = diff(tmp_path, c)
    old = predict_inodes(list(read_entries(tmp_path / "p" / ENTRIES_NAME)))
    assert created(result) == [("etc/a", None), ("etc/a/inner", None),
                               ("etc/x-again", old["usr/lib/x"]), ("lib", None),
                               ("new", None), ("new-link", "new")]
    assert result.inodes["new-link"] == result.inodes["new"]
    assert result.inodes["etc/x-again"] == old["usr/lib/x"]
    assert "usr/lib/x" in result.kept


def test_lost_found_declared_by_one_side_only_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DeriveRefused, match="lost\\+found"):
        diff(tmp_path, [*P, d("lost+found")])


def test_allocator_follows_ext2fs_new_inode() -> None:
    used = set(range(1, 20)) | {8200}
    allocator = InodeAllocator(used, per_group=8192, count=16384)
    assert allocator.allocate(2) == 20                  # group 0: the first free
    assert allocator.allocate(8200) == 8193             # the parent's group first
    assert allocator.allocate(8200) == 8194
    allocator.release(15)
    assert allocator.allocate(2) == 15                  # a freed inode is free again
    assert allocator.allocate(2) == 21
    full = InodeAllocator(set(range(1, 17)), per_group=8, count=16)
    with pytest.raises(DeriveRefused, match="no free inode"):
        full.allocate(2)
    wrap = InodeAllocator(set(range(1, 12)) | set(range(13, 17)), per_group=8, count=16)
    assert wrap.allocate(9) == 12                       # group 1 full: wraps to the start
