"""images.lock.json: atomic, stable, written only on change, safe under parallel resolves."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from pipeline.base.digest import digest_of
from pipeline.errors import LockError
from pipeline.oci import mediatypes as mt
from pipeline.oci.platform import Platform
from pipeline.oci.reference import parse_reference
from pipeline.project.lockfile import LockEntry, read_lock, render_lock, update_lock
from pipeline.registry.resolve import BlobRef, LayerRef, ResolvedImage


def resolved(name: str, *layers: bytes) -> ResolvedImage:
    ref = parse_reference(f"{name}:1")
    return ResolvedImage(
        ref=ref, registry=ref.registry, repository=ref.repository,
        platform=Platform("linux", "amd64"), index_digest=None,
        manifest_digest=digest_of(b"manifest " + name.encode()),
        config=BlobRef(digest_of(b"config " + name.encode()), 100, mt.OCI_CONFIG),
        layers=tuple(LayerRef(digest_of(b), len(b), mt.OCI_LAYER_GZIP, digest_of(b + b"!"))
                     for b in layers))


def entry(name: str, *layers: bytes) -> LockEntry:
    return LockEntry(ref=f"{name}:1", platform="linux/amd64", resolved=resolved(name, *layers))


def test_missing_lock_reads_empty(tmp_path: Path) -> None:
    assert read_lock(tmp_path / "images.lock.json") == {}


def test_write_then_read_round_trip_sorted_and_stable(tmp_path: Path) -> None:
    path = tmp_path / "images.lock.json"
    entries = {"zeta": entry("zeta", b"z"), "alpha": entry("alpha", b"a", b"b")}
    assert update_lock(path, lambda current: {**current, **entries}) is True
    text = path.read_text()
    assert text == render_lock(entries) and text.endswith("}\n")
    data = json.loads(text)
    assert list(data) == ["images", "lockfile_version"]
    assert list(data["images"]) == ["alpha", "zeta"]
    assert data["images"]["alpha"]["ref"] == "alpha:1"
    assert data["images"]["alpha"]["resolved"]["layers"][1]["digest"] == str(digest_of(b"b"))
    assert read_lock(path) == entries


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "images.lock.json"
    update_lock(path, lambda current: {"a": entry("a", b"x")})
    before = os.stat(path)
    assert update_lock(path, lambda current: {"a": entry("a", b"x")}) is False
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert [p.name for p in tmp_path.iterdir()] == ["images.lock.json"]  # no temp files left


def test_parallel_updates_all_land(tmp_path: Path) -> None:
    path = tmp_path / "images.lock.json"
    names = [f"img{i}" for i in range(24)]
    barrier = threading.Barrier(len(names))

    def resolve_one(name: str) -> None:
        barrier.wait()
        update_lock(path, lambda current: {**current, name: entry(name, name.encode())})

    threads = [threading.Thread(target=resolve_one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(read_lock(path)) == sorted(names)


def test_read_sees_an_external_edit(tmp_path: Path) -> None:
    path = tmp_path / "images.lock.json"
    update_lock(path, lambda current: {"a": entry("a", b"x")})
    assert set(read_lock(path)) == {"a"}
    path.write_text(render_lock({"b": entry("b", b"y")}) + "\n")
    assert set(read_lock(path)) == {"b"}


def test_matches_compares_reference_text_and_platform() -> None:
    e = entry("alpine", b"x")
    assert e.matches("alpine:1", "linux/amd64")
    assert not e.matches("alpine:2", "linux/amd64")
    assert not e.matches("docker.io/library/alpine:1", "linux/amd64")  # as written, on purpose
    assert not e.matches("alpine:1", "linux/arm64")


GOOD_ENTRY = entry("a", b"x").to_json()
FIX = "fix it by hand or delete it and run `doit` to resolve again"


@pytest.mark.parametrize("content, message", [
    pytest.param("{", "not valid JSON (Expecting property name enclosed in double quotes: "
                 f"line 1 column 2 (char 1)); {FIX}", id="truncated-json"),
    pytest.param('{"lockfile_version": 2, "images": {}}',
                 f"lockfile_version is 2, this pipeline reads 1; {FIX}", id="future-version"),
    pytest.param("[]", f"lockfile_version is None, this pipeline reads 1; {FIX}", id="array"),
    pytest.param('{"lockfile_version": 1, "images": []}', f"`images` must be an object; {FIX}",
                 id="images-array"),
    pytest.param(json.dumps({"lockfile_version": 1, "images": {"a": {"ref": "a:1"}}}),
                 "image 'a': expected an object with string `ref`, string `platform` and "
                 f"object `resolved`; {FIX}", id="entry-missing-fields"),
    pytest.param(json.dumps({"lockfile_version": 1, "images": {"a": {
        **GOOD_ENTRY, "resolved": {**GOOD_ENTRY["resolved"], "manifest_digest": "sha256:xyz"}}}}),
                 "image 'a': bad `resolved` entry (lock entry 'docker.io/library/a:1': invalid "
                 "digest 'sha256:xyz': expected 64 lowercase hex characters after 'sha256:'; run "
                 f"the resolve step again to rewrite it); {FIX}", id="bad-digest"),
])
def test_corrupt_lock_is_a_lock_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "images.lock.json"
    path.write_text(content)
    with pytest.raises(LockError) as exc:
        read_lock(path)
    assert str(exc.value) == f"{path}: {message}"
