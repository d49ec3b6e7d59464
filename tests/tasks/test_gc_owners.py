"""gc's listing: whose each entry was, a base through the chain its base.json names."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.tasks.gc import _owners_of

OWNERS = {"flat/" + "c" * 64: [("/p/images.toml", "a"), ("/q/images.toml", "b")],
          "layers/" + "d" * 64: [("/p/images.toml", "a")]}


def test_an_entry_is_owned_by_whoever_was_recorded(tmp_path: Path) -> None:
    assert _owners_of(tmp_path, "layers/" + "d" * 64, "layer", OWNERS) == [("/p/images.toml",
                                                                             "a")]
    assert _owners_of(tmp_path, "layers/" + "e" * 64, "layer", OWNERS) == []


def test_a_base_is_owned_through_its_chain_and_a_bad_marker_owns_nothing(
        tmp_path: Path) -> None:
    base = tmp_path / "base" / ("f" * 64)
    base.mkdir(parents=True)
    (base / "base.json").write_text(json.dumps({"key": "f" * 64, "chain": "c" * 64}))
    assert _owners_of(tmp_path, f"base/{'f' * 64}", "base", OWNERS) == OWNERS["flat/" + "c" * 64]
    for text in ("not json", "[1]", json.dumps({"chain": 5}), "[" * 100_000):
        (base / "base.json").write_text(text)
        assert _owners_of(tmp_path, f"base/{'f' * 64}", "base", OWNERS) == []
    (base / "base.json").unlink()
    assert _owners_of(tmp_path, f"base/{'f' * 64}", "base", OWNERS) == []
