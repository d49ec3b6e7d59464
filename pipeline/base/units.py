"""Byte sizes and headroom as written in images.toml: "2GiB", "512MiB", "1G", "20%".

Units follow the tools people already type sizes into (mkfs, truncate,
qemu-img): a bare ``K``/``M``/``G``/``T`` and the IEC ``KiB``/``MiB``/``GiB``/
``TiB`` are powers of 1024, the SI ``kB``/``MB``/``GB``/``TB`` are powers of
1000, and a plain integer (or ``B``) is bytes. Suffixes are case-insensitive.
Nothing here trusts its input: every malformed, negative, fractional-byte or
absurd value is refused with the value quoted and an example of what works.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pipeline.errors import Ext4Error

__all__ = ["Headroom", "DEFAULT_HEADROOM", "MAX_SIZE", "parse_size", "parse_headroom",
           "format_size"]

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# ext4 with 4 KiB blocks and 64-bit block numbers tops out at 1 EiB in theory,
# but e2fsprogs and every microVM monitor we target choke long before that; a
# size beyond 64 TiB in images.toml is a typo, not a root filesystem.
MAX_SIZE = 64 * TiB

_UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB, "kb": 1000,
    "m": MiB, "mib": MiB, "mb": 1000**2,
    "g": GiB, "gib": GiB, "gb": 1000**3,
    "t": TiB, "tib": TiB, "tb": 1000**4,
}
_SIZE_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")
_PERCENT_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*%\s*")
_EXAMPLES = "e.g. 2GiB, 512MiB, 1G or a number of bytes"

# A filesystem more than ten times bigger than its contents is a typo too.
MAX_HEADROOM_PERCENT = 1000.0


def parse_size(value: str | int) -> int:
    """Parse a size into bytes: ``"2GiB"``, ``"512MiB"``, ``"1G"``, ``"1.5GiB"`` or an int.

    Raises Ext4Error for anything else, for zero, for a fraction of a byte and
    for sizes past MAX_SIZE.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise Ext4Error(f"invalid size {value!r}: expected a string or an integer ({_EXAMPLES})")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.fullmatch(value)
        unit = _UNITS.get(match.group(2).lower()) if match else None
        if match is None or unit is None:
            raise Ext4Error(f"invalid size {value!r}: expected a number with an optional "
                            f"unit B, K, KiB, kB, M, MiB, MB, G, GiB, GB, T, TiB or TB "
                            f"({_EXAMPLES})")
        number = match.group(1)
        whole, _, frac = number.partition(".")
        # Exact decimal arithmetic: 1.1GiB must not depend on float rounding.
        scaled = (int(whole) * 10**len(frac) + int(frac or "0")) * unit
        size, rest = divmod(scaled, 10**len(frac))
        if rest:
            raise Ext4Error(f"invalid size {value!r}: it is not a whole number of bytes")
    if size <= 0:
        raise Ext4Error(f"invalid size {value!r}: a size must be positive ({_EXAMPLES})")
    if size > MAX_SIZE:
        raise Ext4Error(f"invalid size {value!r}: {format_size(size)} is larger than the "
                        f"{format_size(MAX_SIZE)} limit")
    return size


@dataclass(frozen=True, slots=True)
class Headroom:
    """Free space an auto-sized filesystem keeps beyond what the tree needs.

    The promise is the larger of ``percent`` % of the space the tree occupies
    and ``bytes``; either part may be zero. Inodes get the same proportion.
    """

    percent: float = 0.0
    bytes: int = 0

    def __post_init__(self) -> None:
        if not (0 <= self.percent <= MAX_HEADROOM_PERCENT) or math.isnan(self.percent):
            raise Ext4Error(f"invalid headroom {self.percent!r}%: expected 0 to "
                            f"{MAX_HEADROOM_PERCENT}%")
        if not (0 <= self.bytes <= MAX_SIZE):
            raise Ext4Error(f"invalid headroom {self.bytes!r} bytes: expected 0 to "
                            f"{format_size(MAX_SIZE)}")

    def for_used(self, used: int) -> int:
        """Bytes of free space promised when the tree occupies ``used`` bytes."""
        return max(math.ceil(used * self.percent / 100), self.bytes)

    def __str__(self) -> str:
        parts = []
        if self.percent:
            parts.append(f"{self.percent:g}%")
        if self.bytes or not parts:
            parts.append(format_size(self.bytes))
        return "max(" + ", ".join(parts) + ")" if len(parts) > 1 else parts[0]


# "The larger of 20 % and 64 MiB" (issue 5): room for a package install or a
# log directory in a small image, proportional room in a big one.
DEFAULT_HEADROOM = Headroom(percent=20.0, bytes=64 * MiB)


def parse_headroom(value: str | int) -> Headroom:
    """Parse ``"20%"`` (of the space the tree occupies) or a size (``"256MiB"``, bytes)."""
    if isinstance(value, str) and "%" in value:
        match = _PERCENT_RE.fullmatch(value)
        if match is None:
            raise Ext4Error(f"invalid headroom {value!r}: expected a percentage such as "
                            f"20% or a size such as 256MiB")
        return Headroom(percent=float(match.group(1)))
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return Headroom()
    if isinstance(value, str) and value.strip() == "0":
        return Headroom()
    try:
        return Headroom(bytes=parse_size(value))
    except Ext4Error as err:
        raise Ext4Error(f"invalid headroom {value!r}: expected a percentage such as 20% "
                        f"or a size such as 256MiB ({err})") from None


def format_size(size: int) -> str:
    """A size for messages: ``"1.5 GiB (1610612736 bytes)"``, or bytes when small."""
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if size >= unit:
            return f"{size / unit:.4g} {name} ({size} bytes)"
    return f"{size} bytes"
