"""parse_size / parse_headroom: every accepted spelling and every refusal, exactly."""

from __future__ import annotations

import pytest

from pipeline.base.units import (
    DEFAULT_HEADROOM,
    MAX_SIZE,
    GiB,
    Headroom,
    KiB,
    MiB,
    TiB,
    format_size,
    parse_headroom,
    parse_size,
)
from pipeline.errors import Ext4Error


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("2GiB", 2 * GiB, id="GiB"),
    pytest.param("512MiB", 512 * MiB, id="MiB"),
    pytest.param("1G", GiB, id="bare-G-is-binary"),
    pytest.param("1g", GiB, id="lowercase"),
    pytest.param("64K", 64 * KiB, id="K"),
    pytest.param("1T", TiB, id="T"),
    pytest.param("1GB", 1_000_000_000, id="GB-is-decimal"),
    pytest.param("100MB", 100_000_000, id="MB-is-decimal"),
    pytest.param("4kB", 4000, id="kB"),
    pytest.param("1.5GiB", 3 * GiB // 2, id="fraction"),
    pytest.param("0.5K", 512, id="fraction-of-K"),
    pytest.param(" 2 GiB ", 2 * GiB, id="blanks"),
    pytest.param("4096", 4096, id="digits-are-bytes"),
    pytest.param("4096B", 4096, id="B"),
    pytest.param(4096, 4096, id="int"),
    pytest.param(MAX_SIZE, MAX_SIZE, id="limit"),
])
def test_parse_size_accepts(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    pytest.param("", "invalid size '': expected a number with an optional unit", id="empty"),
    pytest.param("GiB", "invalid size 'GiB': expected a number", id="no-number"),
    pytest.param("2 gibibytes", "invalid size '2 gibibytes'", id="unknown-unit"),
    pytest.param("2Gi", "invalid size '2Gi'", id="half-unit"),
    pytest.param("-1G", "invalid size '-1G'", id="negative-string"),
    pytest.param(-4096, "invalid size -4096: a size must be positive", id="negative-int"),
    pytest.param(0, "invalid size 0: a size must be positive", id="zero"),
    pytest.param("0MiB", "invalid size '0MiB': a size must be positive", id="zero-unit"),
    pytest.param("1.5", "invalid size '1.5': it is not a whole number of bytes", id="half-byte"),
    pytest.param("1e9", "invalid size '1e9'", id="exponent"),
    pytest.param("1,5G", "invalid size '1,5G'", id="comma"),
    pytest.param("٣G", "invalid size '٣G'", id="non-ascii-digit"),
    pytest.param("65TiB", "invalid size '65TiB': 65 TiB (71468255805440 bytes) is larger than "
                          "the 64 TiB (70368744177664 bytes) limit", id="too-big"),
    pytest.param(True, "invalid size True: expected a string or an integer", id="bool"),
    pytest.param(1.5, "invalid size 1.5: expected a string or an integer", id="float"),
    pytest.param(None, "invalid size None: expected a string or an integer", id="none"),
])
def test_parse_size_refuses(value: object, message: str) -> None:
    with pytest.raises(Ext4Error) as err:
        parse_size(value)  # type: ignore[arg-type]
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("20%", Headroom(percent=20.0), id="percent"),
    pytest.param("12.5 %", Headroom(percent=12.5), id="fraction-percent"),
    pytest.param("0%", Headroom(), id="zero-percent"),
    pytest.param("256MiB", Headroom(bytes=256 * MiB), id="size"),
    pytest.param(4096, Headroom(bytes=4096), id="int"),
    pytest.param(0, Headroom(), id="zero-int"),
    pytest.param("0", Headroom(), id="zero-string"),
])
def test_parse_headroom_accepts(value: str | int, expected: Headroom) -> None:
    assert parse_headroom(value) == expected


@pytest.mark.parametrize(("value", "message"), [
    pytest.param("20%%", "invalid headroom '20%%': expected a percentage such as 20%",
                 id="double-percent"),
    pytest.param("%20", "invalid headroom '%20'", id="percent-first"),
    pytest.param("-5%", "invalid headroom '-5%'", id="negative-percent"),
    pytest.param("2000%", "invalid headroom 2000.0%: expected 0 to 1000.0%", id="too-many"),
    pytest.param("lots", "invalid headroom 'lots': expected a percentage such as 20% or a "
                         "size such as 256MiB (invalid size 'lots'", id="word"),
    pytest.param(-1, "invalid headroom -1", id="negative-int"),
])
def test_parse_headroom_refuses(value: str | int, message: str) -> None:
    with pytest.raises(Ext4Error) as err:
        parse_headroom(value)
    assert str(err.value).startswith(message)


@pytest.mark.parametrize(("headroom", "used", "expected"), [
    pytest.param(DEFAULT_HEADROOM, 10 * MiB, 64 * MiB, id="default-small-tree-gets-64MiB"),
    pytest.param(DEFAULT_HEADROOM, 1000 * MiB, 200 * MiB, id="default-big-tree-gets-20pct"),
    pytest.param(Headroom(percent=10), 1001, 101, id="percent-rounds-up"),
    pytest.param(Headroom(bytes=5), 10**9, 5, id="bytes-only"),
    pytest.param(Headroom(), 10**9, 0, id="none"),
])
def test_headroom_for_used(headroom: Headroom, used: int, expected: int) -> None:
    assert headroom.for_used(used) == expected


def test_headroom_str_and_format_size() -> None:
    assert str(DEFAULT_HEADROOM) == "max(20%, 64 MiB (67108864 bytes))"
    assert str(Headroom()) == "0 bytes"
    assert format_size(1536 * MiB) == "1.5 GiB (1610612736 bytes)"
    assert format_size(100) == "100 bytes"
