"""Trees mkfs.ext4 cannot take are refused before it runs, naming the path or directory."""

from __future__ import annotations

import pytest

from pipeline.errors import Ext4Error
from pipeline.ext4.treelimits import (
    MAX_DEPTH,
    MAX_DIR_ENTRIES,
    MAX_XATTR_NAME_BYTES,
    check_tree,
    max_xattr_value_bytes,
)
from pipeline.flat.image import FileType, FlatEntry


def entry(path: str, kind: FileType = FileType.REGULAR) -> FlatEntry:
    return FlatEntry(path=path, type=kind, mode=0o644, uid=0, gid=0, mtime_ns=0)


def chain(depth: int, name: str = "a") -> list[FlatEntry]:
    return [entry("/".join([name] * n), FileType.DIRECTORY) for n in range(1, depth + 1)]


def flat_dir(count: int, parent: str = "big") -> list[FlatEntry]:
    return [entry(parent, FileType.DIRECTORY)] + [entry(f"{parent}/f{i:06d}")
                                                   for i in range(count)]


ACCEPTED = [
    pytest.param(chain(MAX_DEPTH), id="max-depth"),
    pytest.param(chain(MAX_DEPTH, "g" * 31), id="max-depth-4-KiB-path"),
    pytest.param(flat_dir(30_000), id="real-30000-entry-directory"),
    pytest.param(flat_dir(MAX_DIR_ENTRIES), id="max-dir-entries"),
]


@pytest.mark.parametrize("entries", ACCEPTED)
def test_accepted(entries: list[FlatEntry]) -> None:
    check_tree(entries)


def test_the_2_KiB_path_that_crashes_mkfs_is_refused() -> None:
    with pytest.raises(Ext4Error) as err:
        check_tree(chain(1030))  # "a/" x 1,030: heap corruption in mkfs.ext4 1.47.0
    assert str(err.value) == (
        "path '" + "/".join(["a"] * 60) + "/'... is 129 directories deep, more than the 128"
        " mkfs.ext4 handles safely (deeper trees crash e2fsprogs 1.47.0); the image cannot be"
        " built with mkfs.ext4")


def test_a_100000_entry_directory_is_refused_naming_it() -> None:
    with pytest.raises(Ext4Error) as err:
        check_tree(flat_dir(100_000, "usr/share/\x1bnoise"))
    assert str(err.value) == (
        "directory '/usr/share/\\x1bnoise' holds 100000 entries, more than the 40000 per"
        " directory mkfs.ext4 builds in reasonable time (its directory insert is quadratic);"
        ' the image cannot be built with mkfs.ext4: use builder = "native" (the default) for'
        " this image")


def with_xattr(name: str, value: bytes) -> list[FlatEntry]:
    return [FlatEntry(path="etc", type=FileType.DIRECTORY, mode=0o755, uid=0, gid=0,
                      mtime_ns=0, xattrs=((name, value),))]


def test_an_xattr_name_ext4_would_cut_is_refused_naming_path_and_attribute() -> None:
    check_tree(with_xattr("user." + "n" * MAX_XATTR_NAME_BYTES, b"v"))
    with pytest.raises(Ext4Error) as err:
        check_tree(with_xattr("user." + "n" * 256, b"v"))
    assert str(err.value) == (
        f"'/etc': extended attribute 'user.{'n' * 256}' has a 256-byte name after its"
        " prefix, more than the 255 ext4 stores (it would be cut, and two names could"
        " merge); drop or rename it in the image")


def test_an_xattr_value_larger_than_a_block_holds_is_refused() -> None:
    limit = max_xattr_value_bytes(len("big"))
    assert limit == 4096 - 32 - (16 + 4) - 4
    check_tree(with_xattr("user.big", b"x" * limit))
    with pytest.raises(Ext4Error) as err:
        check_tree(with_xattr("user.big", b"x" * (limit + 1)))
    assert str(err.value) == (f"'/etc': extended attribute 'user.big' has a {limit + 1}-byte"
                              f" value, more than the {limit} bytes one ext4 xattr block"
                              " holds; drop it from the image")
