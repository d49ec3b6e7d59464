"""Safety limits for reading one layer, with the reason for each default."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.base.units import GiB, MiB

__all__ = ["Limits"]



@dataclass(frozen=True, slots=True)
class Limits:
    """Safety limits for one layer; defaults are far above any real image."""

    max_stream_bytes: int = 64 * GiB
    """Uncompressed tar stream incl. headers: stops decompression bombs (big real
    layers are a few GiB; ML images reach tens)."""
    max_entries: int = 10_000_000
    """Tar members: index and in-memory tree grow with it (a full distro is ~100 k)."""
    max_header_bytes: int = 1 * MiB
    """One PAX or GNU long-name header's data, read into memory whole."""
    max_path_bytes: int = 4096
    """A normalized path or hard-link target (Linux PATH_MAX)."""
    max_component_bytes: int = 255
    """One path component (NAME_MAX on ext4 and the staging filesystem)."""
