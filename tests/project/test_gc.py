"""Cache garbage collection removes exactly what nothing references, and nothing else."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pipeline.base.digest import digest_of
from pipeline.project.cache import CacheLayout
from pipeline.project.gc import Keep, collect, plan

KEPT_BLOB = digest_of(b"kept blob")
KEPT_CONFIG = digest_of(b"kept config")
OLD_BLOB = digest_of(b"old blob")
KEPT_LAYER = digest_of(b"kept layer")
OLD_LAYER = digest_of(b"old layer")
KEPT_CHAIN = "c" * 64
OLD_CHAIN = "d" * 64


def populate(cache: Path, outside: Path) -> None:
    blobs = cache / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    for digest in (KEPT_BLOB, KEPT_CONFIG, OLD_BLOB):
        (blobs / digest.hex).write_bytes(b"x" * 5000)
    (blobs / f".{OLD_BLOB.hex}.partial").write_bytes(b"half")  # an interrupted download
    (cache / "blobs" / "sha512").mkdir()
    (cache / "blobs" / "sha512" / ("e" * 128)).write_bytes(b"y")
    for digest in (KEPT_LAYER, OLD_LAYER):
        store = cache / "layers" / digest.hex
        (store / "files").mkdir(parents=True)
        (store / "files" / "000001").write_bytes(b"z" * 100)
        (store / "files").chmod(0o500)  # read-only directories inside a store
    (cache / "layers" / ".tmp-unpack-123").mkdir()
    for chain in (KEPT_CHAIN, OLD_CHAIN):
        rootfs = cache / "flat" / chain / "rootfs"
        rootfs.mkdir(parents=True)
        # A flat image's files are hard links into the layer stores.
        os.link(cache / "layers" / KEPT_LAYER.hex / "files" / "000001", rootfs / f"f-{chain[0]}")
        # A symlink planted inside must be removed as a link, never followed.
        (rootfs / "escape").symlink_to(outside)
    (cache / "doit.db").write_bytes(b"db")
    (cache / "run.lock").write_text("1\n")


KEEP = Keep.of(blobs=[KEPT_BLOB, KEPT_CONFIG], layers=[KEPT_LAYER], chains=[KEPT_CHAIN])


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_collect_removes_only_unreferenced_entries(tmp_path: Path) -> None:
    cache, outside = tmp_path / "cache", tmp_path / "victim"
    outside.mkdir()
    (outside / "canary").write_text("alive")
    populate(cache, outside)
    result = collect(CacheLayout(cache), KEEP)
    assert result.errors == ()
    assert result.kept == 4
    assert {str(p.relative_to(cache)) for p in result.removed} == {
        f"blobs/sha256/{OLD_BLOB.hex}", f"blobs/sha256/.{OLD_BLOB.hex}.partial",
        "blobs/sha512/" + "e" * 128,
        f"layers/{OLD_LAYER.hex}", "layers/.tmp-unpack-123", f"flat/{OLD_CHAIN}",
    }
    assert tree(cache) == {
        "blobs", "blobs/sha256", "blobs/sha512", f"blobs/sha256/{KEPT_BLOB.hex}",
        f"blobs/sha256/{KEPT_CONFIG.hex}", "layers", f"layers/{KEPT_LAYER.hex}",
        f"layers/{KEPT_LAYER.hex}/files", f"layers/{KEPT_LAYER.hex}/files/000001",
        "flat", f"flat/{KEPT_CHAIN}", f"flat/{KEPT_CHAIN}/rootfs",
        f"flat/{KEPT_CHAIN}/rootfs/f-c", f"flat/{KEPT_CHAIN}/rootfs/escape",
        "doit.db", "run.lock",
    }
    assert (outside / "canary").read_text() == "alive"
    assert result.freed_bytes > 0


def test_dry_run_removes_nothing(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    populate(cache, tmp_path)
    before = tree(cache)
    result = collect(CacheLayout(cache), KEEP, dry_run=True)
    assert len(result.removed) == 6
    assert tree(cache) == before


def test_empty_keep_empties_the_cache_but_not_its_bookkeeping(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    populate(cache, tmp_path)
    collect(CacheLayout(cache), Keep())
    assert tree(cache) == {"blobs", "blobs/sha256", "blobs/sha512", "layers", "flat",
                           "doit.db", "run.lock"}


def test_missing_cache_is_empty(tmp_path: Path) -> None:
    assert plan(CacheLayout(tmp_path / "nothing"), KEEP) == ([], 0)


@pytest.mark.parametrize("where", ["layers", "flat"])
def test_a_file_where_a_directory_belongs_is_removed(tmp_path: Path, where: str) -> None:
    cache = tmp_path / "cache"
    (cache / where).mkdir(parents=True)
    name = KEPT_LAYER.hex if where == "layers" else KEPT_CHAIN
    (cache / where / name).write_text("not a directory")
    assert plan(CacheLayout(cache), KEEP) == ([cache / where / name], 0)


def test_base_images_left_by_derived_builds_all_go_and_base_with_them(tmp_path: Path) -> None:
    # Earlier versions kept the base images of derived builds under base/; nothing
    # reads them any more, so every one goes, whatever the manifest keeps.
    cache = tmp_path / "cache"
    base = cache / "base"
    for name in ("a" * 64, "b" * 64, f".tmp-{'c' * 64}-12-ab"):
        (base / name).mkdir(parents=True)
        (base / name / "base.ext4").write_bytes(b"e" * 8192)
    for name in (f".lock-{'a' * 64}", f".lock-{'b' * 64}"):
        (base / name).write_bytes(b"")
    keep = Keep.of(chains=["a" * 64, "b" * 64])
    doomed, kept = plan(CacheLayout(cache), keep)
    assert kept == 0
    assert {p.name for p in doomed} == {"a" * 64, "b" * 64, f".tmp-{'c' * 64}-12-ab",
                                        f".lock-{'a' * 64}", f".lock-{'b' * 64}"}
    dry = collect(CacheLayout(cache), keep, dry_run=True)
    assert sorted(dry.kinds) == ["base", "base", "leftover", "leftover", "leftover"]
    assert base.is_dir()
    result = collect(CacheLayout(cache), keep)
    assert result.removed == dry.removed and result.freed_bytes == dry.freed_bytes > 0
    assert not base.exists()


def test_a_foreign_file_keeps_the_base_directory(tmp_path: Path) -> None:
    base = tmp_path / "cache" / "base"
    (base / ("a" * 64)).mkdir(parents=True)
    (base / "notes.txt").write_text("the user's")
    collect(CacheLayout(tmp_path / "cache"), Keep.of())
    assert not (base / ("a" * 64)).exists()
    assert (base / "notes.txt").read_text() == "the user's"


@pytest.mark.parametrize("relative", [
    "base/notes.txt", "base/ext4", "layers/README", "flat/my-rootfs", "blobs/md5",
    "blobs/sha256/holiday.jpg", "blobs/sha256/" + "A" * 64, "layers/" + "a" * 63,
], ids=["project-base-dir-file", "project-subdir", "readme", "user-dir", "unknown-algorithm",
        "file-among-blobs", "uppercase-hex", "short-hex"])
def test_gc_never_removes_a_name_it_does_not_create(tmp_path: Path, relative: str) -> None:
    cache = tmp_path / "cache"
    foreign = cache / relative
    foreign.parent.mkdir(parents=True, exist_ok=True)
    foreign.write_text("the user's")
    with capture_logs() as logs:
        assert plan(CacheLayout(cache), KEEP) == ([], 0)
        collect(CacheLayout(cache), Keep.of())
    assert foreign.read_text() == "the user's"
    # What the user sees: one warning per look at it, naming the file and why it stays.
    warned = [e for e in logs if e["event"] == "gc.foreign_entry"]
    assert warned and all(
        (e["log_level"], e["path"], e["reason"]) == (
            "warning", str(foreign), "not a name the pipeline creates; left alone")
        for e in warned), logs
