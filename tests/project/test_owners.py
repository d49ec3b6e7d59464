"""The owners log: who last used a cache entry, bounded, and never trusted beyond labels."""

from __future__ import annotations

from pathlib import Path

from pipeline.flat.image import chain_key
from pipeline.project.owners import (
    MAX_OWNERS_PER_ENTRY,
    OWNERS,
    compact_owners,
    entries_used,
    read_owners,
    record_owners,
)
from tests.project.test_lockfile import resolved

A = ("/p/images.toml", "a")
B = ("/p/images.toml", "b")


def test_owners_are_the_last_users_most_recent_last(tmp_path: Path) -> None:
    record_owners(tmp_path, {A: ["layers/x", "flat/y"]})
    record_owners(tmp_path, {B: ["layers/x"]})
    record_owners(tmp_path, {A: ["layers/x"]})
    assert read_owners(tmp_path) == {"layers/x": [B, A], "flat/y": [A]}


def test_a_torn_or_foreign_line_is_skipped_and_the_next_record_still_reads(
        tmp_path: Path) -> None:
    record_owners(tmp_path, {A: ["layers/x"]})
    with open(tmp_path / OWNERS, "ab") as f:
        f.write(b'{"manifest": "/p/images.toml", "image": "b", "entr')  # a crash mid-append
    record_owners(tmp_path, {B: ["flat/y"]})
    with open(tmp_path / OWNERS, "ab") as f:
        f.write(b'[1, 2]\n{"manifest": 1, "image": "c", "entries": ["z"]}\n\xff\n'
                + b"[" * 100_000 + b"\n")
    assert read_owners(tmp_path) == {"layers/x": [A], "flat/y": [B]}


def test_an_entry_keeps_a_bounded_number_of_owners(tmp_path: Path) -> None:
    for n in range(MAX_OWNERS_PER_ENTRY + 5):
        record_owners(tmp_path, {("/p/images.toml", f"i{n:02d}"): ["layers/base"]})
    users = read_owners(tmp_path)["layers/base"]
    assert [image for _, image in users] == [
        f"i{n:02d}" for n in range(5, MAX_OWNERS_PER_ENTRY + 5)]


def test_compaction_drops_removed_and_vanished_entries(tmp_path: Path) -> None:
    for name in ("layers/kept", "layers/removed"):
        (tmp_path / name).mkdir(parents=True)
    record_owners(tmp_path, {A: ["layers/kept", "layers/removed", "layers/vanished"]})
    record_owners(tmp_path, {B: ["layers/kept"]})
    compact_owners(tmp_path, removed=["layers/removed"])
    assert read_owners(tmp_path) == {"layers/kept": [A, B]}
    assert len((tmp_path / OWNERS).read_text().splitlines()) == 2
    compact_owners(tmp_path, removed=["layers/kept"])
    assert not (tmp_path / OWNERS).exists()


def test_entries_used_names_blobs_layers_and_the_chain() -> None:
    image = resolved("a", b"l1", b"l2")
    config, l1, l2 = image.config.digest, *(layer.digest for layer in image.layers)
    found = entries_used(image)
    # Only the whole chain's flat image: no build flattens a prefix (derived builds did).
    assert found == [*(f"blobs/sha256/{d.hex}" for d in (config, l1, l2)),
                     f"layers/{l1.hex}", f"layers/{l2.hex}",
                     f"flat/{chain_key([str(l1), str(l2)])}"]
    with_config = entries_used(image, "/etc/app.json")
    assert with_config[:len(found)] == found and len(with_config) == len(found) + 2
