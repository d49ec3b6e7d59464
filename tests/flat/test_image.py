"""pipeline.flat.image: the on-disk contract between flatten and the ext4 builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.flat.image import (
    FORMAT_VERSION,
    HEADER_NAME,
    FileType,
    FlatEntry,
    FlatHeader,
    chain_key,
    read_entries,
    read_header,
    write_entries,
    write_header,
)

ENTRIES = [
    FlatEntry("", FileType.DIRECTORY, 0o755, 0, 0, 1_700_000_000_000_000_000),
    FlatEntry("usr/bin/ping", FileType.REGULAR, 0o4755, 0, 0, 1_700_000_000_123_456_789,
              xattrs=(("security.capability", b"\x01\x00\x00\x02\x00\x20\x00\x00\xff\x00"),
                      ("user.empty", b"")),
              size=4948, link_group=7),
    FlatEntry("usr/bin/ping6", FileType.REGULAR, 0o4755, 0, 0, 1_700_000_000_123_456_789,
              size=4948, link_group=7),
    FlatEntry("odd/a\nb \"q\" \\ \udcff\udcfe", FileType.REGULAR, 0o644, 100000, 4294967294,
              -5_000_000_000, size=0),
    FlatEntry("bin", FileType.SYMLINK, 0o777, 0, 0, 0, target="usr/bin"),
    FlatEntry("dev/sda", FileType.BLOCK, 0o660, 0, 6, 0, rdev=(8, 0)),
    FlatEntry("dev/big", FileType.CHAR, 0o600, 0, 0, 0, rdev=(4095, 1048575)),
    FlatEntry("run/initctl", FileType.FIFO, 0o600, 0, 0, 0),
]


def test_entries_round_trip_exactly(tmp_path: Path) -> None:
    path = tmp_path / "entries.jsonl"
    write_entries(path, ENTRIES)
    assert list(read_entries(path)) == ENTRIES


def test_entries_file_is_ascii_one_record_per_line(tmp_path: Path) -> None:
    # Names with newlines and non-UTF-8 bytes must not break the line framing.
    path = tmp_path / "entries.jsonl"
    write_entries(path, ENTRIES)
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == len(ENTRIES) + 1
    assert all(b < 0x80 for b in path.read_bytes())
    assert json.loads(lines[3])["p"] == "odd/a\nb \"q\" \\ \udcff\udcfe"


def test_defaults_are_not_written(tmp_path: Path) -> None:
    path = tmp_path / "entries.jsonl"
    write_entries(path, ENTRIES[:1])
    assert json.loads(path.read_text()) == {"p": "", "t": "d", "m": 0o755, "u": 0, "g": 0,
                                            "mt": 1_700_000_000_000_000_000}


def test_header_round_trip_and_version_check(tmp_path: Path) -> None:
    header = FlatHeader(chain=("sha256:" + "a" * 64, "sha256:" + "b" * 64), entries=8,
                        inodes=7, directories=1, regular_bytes=9896)
    path = tmp_path / HEADER_NAME
    write_header(path, header)
    assert read_header(path) == header
    data = json.loads(path.read_text())
    data["format"] = FORMAT_VERSION + 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError,
                       match=f"internal error: flat image .* has format {FORMAT_VERSION + 1}"):
        read_header(path)


def test_chain_key_depends_on_order_and_every_digest() -> None:
    a, b = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_key([a, b]) == chain_key([a, b])
    assert chain_key([a, b]) != chain_key([b, a])
    assert chain_key([a]) != chain_key([a, b])
    # Pinned: a changed key would orphan every cached flat image.
    assert chain_key([a]) == "6c72a5fcba33ca22516525a84d25acf4cbe54cbf1e491a2b07519ea7c2f6a281"
