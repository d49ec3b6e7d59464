"""The per-image ext4 build options, validated, and their stable dict form.

``Ext4Options.to_dict()`` is what keys an mkfs task (doit ``config_changed``)
and what derives nothing else: every field that changes the output bytes is
in it, with a fixed key order and plain JSON types, so a change of any
option rebuilds the image and nothing else does.

Nothing is trusted: labels, feature names and numbers are checked here, so
mke2fs never sees an option we have not thought about.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pipeline.base.units import DEFAULT_HEADROOM, Headroom, parse_headroom, parse_size
from pipeline.errors import Ext4Error
from pipeline.ext4.builder import BUILDERS, DEFAULT_BUILDER

__all__ = ["Ext4Options", "DEFAULT_FEATURES", "TOGGLABLE_FEATURES", "INODE_SIZES"]

# What our mke2fs.conf turns on (Debian 12's ext4 defaults, which every
# kernel since 3.18 mounts read-write). orphan_file and metadata_csum_seed are
# off: kernels before 5.15 refuse to mount orphan_file read-write.
DEFAULT_FEATURES = frozenset({
    "sparse_super", "large_file", "filetype", "resize_inode", "dir_index", "ext_attr",
    "has_journal", "extent", "huge_file", "flex_bg", "metadata_csum", "64bit", "dir_nlink",
    "extra_isize",
})
# Features an image may turn on or off. Others change how inodes hold data
# (inline_data, ^extent, bigalloc), names (casefold, encrypt) or space
# (orphan_file) in ways the fixup pass and the size planner do not model, so
# they are refused.
TOGGLABLE_FEATURES = frozenset({
    "64bit", "dir_index", "dir_nlink", "extra_isize", "flex_bg", "huge_file", "large_dir",
    "metadata_csum", "metadata_csum_seed", "resize_inode",
})
INODE_SIZES = (128, 256, 512, 1024)
MAX_LABEL_BYTES = 16                        # s_volume_name is 16 bytes
MAX_RESERVED_PERCENT = 50.0                 # mke2fs refuses more than 50 %


@dataclass(frozen=True, slots=True, kw_only=True)
class Ext4Options:
    """How to build one image's ext4; the defaults suit a microVM root filesystem."""

    size: int | None = None
    """Filesystem size in bytes (a string such as "2GiB" is parsed), or None for auto."""
    headroom: Headroom = DEFAULT_HEADROOM
    """Free space an auto size keeps (ignored for a fixed size)."""
    label: str = ""
    inode_size: int = 256
    journal: bool = True
    features: tuple[str, ...] = ()
    """mke2fs -O changes on top of DEFAULT_FEATURES: ``"large_dir"``, ``"^metadata_csum"``."""
    reserved_percent: float = 0.0
    builder: str = DEFAULT_BUILDER
    """``"native"`` (the writer in ext4.native) or ``"mkfs"`` (mkfs.ext4 -d plus a
    debugfs fixup); both always build in full: ext4.builder."""

    def __post_init__(self) -> None:
        if self.size is not None:
            size = parse_size(self.size)
            if size % 4096:
                raise Ext4Error(f"invalid size {self.size!r}: it must be a multiple of 4 KiB")
            object.__setattr__(self, "size", size)
        if not isinstance(self.headroom, Headroom):
            object.__setattr__(self, "headroom", parse_headroom(self.headroom))
        label = self.label.encode("utf-8", "surrogateescape")
        if len(label) > MAX_LABEL_BYTES or any(c < 0x20 or c == 0x7F for c in label):
            raise Ext4Error(f"invalid label {self.label!r}: expected at most "
                            f"{MAX_LABEL_BYTES} bytes without control characters")
        if self.inode_size not in INODE_SIZES:
            raise Ext4Error(f"invalid inode size {self.inode_size!r}: expected one of "
                            f"{', '.join(map(str, INODE_SIZES))}")
        if self.builder not in BUILDERS:
            raise Ext4Error(f"invalid builder {self.builder!r}: expected "
                            + " or ".join(f'"{b}"' for b in BUILDERS))
        if not isinstance(self.journal, bool):
            raise Ext4Error(f"invalid journal {self.journal!r}: expected true or false")
        if isinstance(self.features, str):
            raise Ext4Error(f"invalid features {self.features!r}: expected a list of names")
        object.__setattr__(self, "features", _normalise_features(self.features))
        percent = self.reserved_percent
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or \
                math.isnan(percent) or not 0 <= percent <= MAX_RESERVED_PERCENT:
            raise Ext4Error(f"invalid reserved_percent {percent!r}: expected a number from 0 "
                            f"to {MAX_RESERVED_PERCENT:g}")

    def feature_set(self) -> frozenset[str]:
        """The features the filesystem will have."""
        on = set(DEFAULT_FEATURES)
        for feature in self.features:
            if feature.startswith("^"):
                on.discard(feature[1:])
            else:
                on.add(feature)
        if not self.journal:
            on.discard("has_journal")
        return frozenset(on)

    # The geometry the size planner (ext4size) models, from the features.
    @property
    def desc_size(self) -> int:
        return 64 if "64bit" in self.feature_set() else 32

    @property
    def resize_inode(self) -> bool:
        return "resize_inode" in self.feature_set()

    @property
    def sparse_super(self) -> bool:
        return "sparse_super" in self.feature_set()

    @property
    def metadata_csum(self) -> bool:
        return "metadata_csum" in self.feature_set()

    def to_dict(self) -> dict[str, object]:
        """A stable, JSON-ready dict of every option that affects the output bytes."""
        return {
            "size": self.size if self.size is not None else "auto",
            "headroom": {"percent": self.headroom.percent, "bytes": self.headroom.bytes},
            "label": self.label,
            "inode_size": self.inode_size,
            "journal": self.journal,
            "features": list(self.features),
            "reserved_percent": self.reserved_percent,
            "block_size": 4096,
            "builder": self.builder,
        }


def _normalise_features(features: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    wanted: dict[str, bool] = {}
    for feature in features:
        if not isinstance(feature, str):
            raise Ext4Error(f"invalid feature {feature!r}: expected a name such as "
                            f"'large_dir' or '^metadata_csum'")
        name = feature.strip()
        on = not name.startswith("^")
        name = name.lstrip("^")
        if name == "has_journal":
            raise Ext4Error("feature 'has_journal' is set with the `journal` option, "
                            "not in `features`")
        if name not in TOGGLABLE_FEATURES:
            raise Ext4Error(f"unsupported ext4 feature {feature!r}: expected one of "
                            f"{', '.join(sorted(TOGGLABLE_FEATURES))}, optionally with '^'")
        if wanted.get(name, on) != on:
            raise Ext4Error(f"feature {name!r} is both turned on and off in `features`")
        wanted[name] = on
    # Only real changes from the defaults, so equivalent spellings key alike.
    return tuple(name if on else "^" + name for name, on in sorted(wanted.items())
                 if on != (name in DEFAULT_FEATURES))
