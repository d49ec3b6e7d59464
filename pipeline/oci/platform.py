"""Platforms (``os/architecture[/variant]``): parsing, normalisation and matching.

Normalisation follows containerd's ``platforms`` package (database.go):
``x86_64``/``x86-64`` -> ``amd64`` (variant ``v1`` -> none), ``aarch64`` ->
``arm64`` (``v8`` -> none, ``v9.0`` -> ``v9``), ``armhf`` -> ``arm/v7``,
``armel`` -> ``arm/v6``, ``arm`` without a variant -> ``arm/v7``, ``i386`` ->
``386``, ``macos`` -> ``darwin``; everything lowercased.

Matching follows containerd's ordered matcher (compare.go): the exact
platform first, then older variants of the same architecture that the wanted
one runs (``arm/v7`` takes ``v6`` then ``v5``; ``amd64/v3`` takes ``v2`` then
``v1``; ``arm64/v9`` takes ``v8``). Unlike containerd we never fall back across
architectures (``arm64`` -> ``arm``, ``amd64`` -> ``386``): a root filesystem
built for a microVM would silently get a different ABI than the one asked for.

Nothing here trusts its input: each part must match ``[A-Za-z0-9_.-]+``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.errors import BadPlatform

__all__ = ["Platform", "DEFAULT_PLATFORM", "parse_platform", "normalize", "best_match"]

_PART = re.compile(r"[A-Za-z0-9_.-]+")
# Architectures that may be given alone ("arm64" means "linux/arm64").
_KNOWN_ARCHITECTURES = frozenset({
    "386", "amd64", "arm", "arm64", "ppc64", "ppc64le", "riscv64", "s390x", "mips64le",
    "loong64", "i386", "x86_64", "x86-64", "aarch64", "armhf", "armel",
})
_ARM_MIN_VARIANT = 5


@dataclass(frozen=True, slots=True, order=True)
class Platform:
    """A normalised platform; build one with ``parse_platform`` or ``Platform.of``."""

    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def of(cls, os: str, architecture: str, variant: str = "") -> Platform:
        """Normalise raw values (e.g. from an index or an image config)."""
        return normalize(cls(os, architecture, variant or ""))

    def __str__(self) -> str:
        parts = [self.os, self.architecture] + ([self.variant] if self.variant else [])
        return "/".join(parts)

    def compatible(self) -> tuple[Platform, ...]:
        """Platforms this one runs, most preferred first (itself first)."""
        found = [self]
        number = _variant_number(self.variant)
        if self.architecture == "arm" and number is not None:
            found += [Platform(self.os, "arm", f"v{n}")
                      for n in range(number - 1, _ARM_MIN_VARIANT - 1, -1)]
        elif self.architecture == "amd64" and number is not None:
            # v1 is the baseline and is normalised to "no variant".
            found += [Platform(self.os, "amd64", f"v{n}" if n > 1 else "")
                      for n in range(number - 1, 0, -1)]
        elif self.architecture == "arm64" and self.variant:
            found.append(Platform(self.os, "arm64", ""))  # v8, the baseline
        return tuple(found)

    def matches(self, offered: Platform) -> bool:
        """True if an image built for ``offered`` runs on this platform."""
        return normalize(offered) in self.compatible()


DEFAULT_PLATFORM = Platform("linux", "amd64")


def _variant_number(variant: str) -> int | None:
    digits = variant[1:].split(".", 1)[0] if variant.startswith("v") else ""
    return int(digits) if digits.isdigit() else None


def normalize(platform: Platform) -> Platform:
    """containerd's Normalize: canonical os, architecture and variant spellings."""
    os = platform.os.lower()
    if os == "macos":
        os = "darwin"
    arch, variant = platform.architecture.lower(), platform.variant.lower()
    if arch == "i386":
        arch, variant = "386", ""
    elif arch in ("x86_64", "x86-64", "amd64"):
        arch = "amd64"
        if variant == "v1":
            variant = ""
    elif arch in ("aarch64", "arm64"):
        arch = "arm64"
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
    elif arch == "armhf":
        arch, variant = "arm", "v7"
    elif arch == "armel":
        arch, variant = "arm", "v6"
    elif arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return Platform(os, arch, variant)


def parse_platform(text: str) -> Platform:
    """Parse ``os/arch[/variant]`` (or a bare architecture, meaning Linux) and normalise it."""
    if not isinstance(text, str) or not text.strip():
        raise BadPlatform(str(text), "expected 'os/arch[/variant]', e.g. 'linux/amd64' or"
                          " 'linux/arm/v7'")
    parts = text.strip().split("/")
    if len(parts) > 3 or not all(_PART.fullmatch(p) for p in parts):
        raise BadPlatform(text, "expected 'os/arch[/variant]' with letters, digits, '_', '.'"
                          " or '-' in each part")
    if len(parts) == 1:
        if parts[0].lower() not in _KNOWN_ARCHITECTURES:
            raise BadPlatform(text, "give both os and architecture, e.g. 'linux/amd64'")
        parts = ["linux", parts[0]]
    return Platform.of(*parts)


def best_match(wanted: Platform, offered: Sequence[Platform | None]) -> int | None:
    """Index of the best entry of ``offered`` for ``wanted``; first wins among equals."""
    order = {p: rank for rank, p in enumerate(wanted.compatible())}
    best: tuple[int, int] | None = None
    for position, candidate in enumerate(offered):
        if candidate is None:
            continue
        rank = order.get(normalize(candidate))
        if rank is not None and (best is None or rank < best[0]):
            best = (rank, position)
    return None if best is None else best[1]
