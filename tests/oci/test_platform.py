"""Platform parsing, normalisation and matching (containerd's rules, same-architecture only)."""

from __future__ import annotations

import pytest

from pipeline.errors import BadPlatform
from pipeline.oci.platform import DEFAULT_PLATFORM, Platform, best_match, parse_platform

PARSE = [
    ("linux/amd64", "linux/amd64"),
    ("linux/x86_64", "linux/amd64"),
    ("linux/x86-64", "linux/amd64"),
    ("linux/amd64/v1", "linux/amd64"),
    ("linux/amd64/v3", "linux/amd64/v3"),
    ("linux/aarch64", "linux/arm64"),
    ("linux/arm64/v8", "linux/arm64"),
    ("linux/arm64/8", "linux/arm64"),
    ("linux/arm64/v9.0", "linux/arm64/v9"),
    ("linux/arm", "linux/arm/v7"),
    ("linux/arm/7", "linux/arm/v7"),
    ("linux/arm/6", "linux/arm/v6"),
    ("linux/arm/v5", "linux/arm/v5"),
    ("linux/armhf", "linux/arm/v7"),
    ("linux/armel", "linux/arm/v6"),
    ("linux/i386", "linux/386"),
    ("LINUX/AMD64", "linux/amd64"),
    ("macos/arm64", "darwin/arm64"),
    ("linux/riscv64", "linux/riscv64"),
    ("arm64", "linux/arm64"),
    ("x86_64", "linux/amd64"),
    (" linux/s390x ", "linux/s390x"),
]


@pytest.mark.parametrize("text, canonical", PARSE, ids=[p[0].strip() for p in PARSE])
def test_parse(text: str, canonical: str) -> None:
    platform = parse_platform(text)
    assert str(platform) == canonical
    assert parse_platform(str(platform)) == platform


@pytest.mark.parametrize("text, message", [
    ("", "invalid platform '': expected 'os/arch[/variant]', e.g. 'linux/amd64'"
     " or 'linux/arm/v7'"),
    ("linux", "invalid platform 'linux': give both os and architecture, e.g."
     " 'linux/amd64'"),
    ("linux/arm/v7/extra", "invalid platform 'linux/arm/v7/extra': expected"
     " 'os/arch[/variant]' with letters, digits, '_', '.' or '-' in each part"),
    ("linux//v7", "invalid platform 'linux//v7': expected 'os/arch[/variant]'"
     " with letters, digits, '_', '.' or '-' in each part"),
    ("linux/am d64", "invalid platform 'linux/am d64': expected"
     " 'os/arch[/variant]' with letters, digits, '_', '.' or '-' in each part"),
], ids=["empty", "os-only", "four-parts", "empty-part", "space"])
def test_parse_bad(text: str, message: str) -> None:
    with pytest.raises(BadPlatform) as info:
        parse_platform(text)
    assert str(info.value) == message
    assert info.value.platform == text


def P(text: str) -> Platform:
    return parse_platform(text)


# (wanted, offered in index order, index chosen or None)
MATCH = [
    ("exact", "linux/amd64", ["linux/arm64", "linux/amd64"], 1),
    ("default-is-linux-amd64", str(DEFAULT_PLATFORM), ["linux/amd64"], 0),
    ("arm-v7-exact-over-v6", "linux/arm/v7", ["linux/arm/v6", "linux/arm/v7"], 1),
    ("arm-v7-falls-back-to-v6", "linux/arm/v7", ["linux/arm/v6", "linux/arm64"], 0),
    ("arm-v6-does-not-take-v7", "linux/arm/v6", ["linux/arm/v7"], None),
    ("arm-index-without-variant-is-v7", "linux/arm/v7", [Platform("linux", "arm")], 0),
    ("arm64-index-v8", "linux/arm64", [Platform("linux", "arm64", "v8")], 0),
    ("arm64-no-fallback-to-arm", "linux/arm64", ["linux/arm/v7"], None),
    ("amd64-no-fallback-to-386", "linux/amd64", ["linux/386"], None),
    ("amd64-v3-takes-baseline", "linux/amd64/v3", ["linux/arm64", "linux/amd64"], 1),
    ("amd64-v3-prefers-v2", "linux/amd64/v3", ["linux/amd64", "linux/amd64/v2"], 1),
    ("amd64-baseline-refuses-v3", "linux/amd64", ["linux/amd64/v3"], None),
    ("arm64-v9-takes-v8", "linux/arm64/v9", ["linux/arm64"], 0),
    ("os-must-match", "linux/amd64", ["windows/amd64"], None),
    ("first-of-equals", "linux/amd64", ["linux/amd64", "linux/amd64"], 0),
    ("index-x86_64-normalised", "linux/amd64", [Platform("linux", "x86_64")], 0),
    ("none-entries-skipped", "linux/amd64", [None, "linux/amd64"], 1),
    ("nothing", "linux/amd64", [], None),
]


@pytest.mark.parametrize("wanted, offered, chosen", [m[1:] for m in MATCH],
                         ids=[m[0] for m in MATCH])
def test_best_match(wanted: str, offered: list[str | Platform | None], chosen: int | None) -> None:
    platforms = [P(o) if isinstance(o, str) else o for o in offered]
    assert best_match(P(wanted), platforms) == chosen


def test_matches_and_compatible_order() -> None:
    assert [str(p) for p in P("linux/arm/v8").compatible()] == [
        "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert [str(p) for p in P("linux/amd64/v4").compatible()] == [
        "linux/amd64/v4", "linux/amd64/v3", "linux/amd64/v2", "linux/amd64"]
    assert P("linux/arm/v7").matches(Platform("linux", "armhf"))
    assert not P("linux/arm64").matches(Platform("linux", "arm", "v7"))
