"""Base images for derived builds: the ext4 of a shared layer chain, built once and cached.

One base per key (``base_key``: the chain key of the base chain P, the
image's ext4 options but size and headroom, the e2fsprogs versions, this
module's format and growth allowance)::

    <base_root>/<key>/
        base.ext4     build_ext4 of P's flat image: auto size without headroom
                      (so images of any size grow from it) and spare inodes for
                      what derived images add (``spare_inodes``)
        inodes.json   the proven inode number of each of P's entries, in
                      entries.jsonl order, so deriving lists no unchanged directory
        base.json     written last: format, key, sha256 of the entries.jsonl the
                      base was built from, the inodes it had in use
    <base_root>/.lock-<key>            flock: one builder per key, across threads
                                       and processes; the others wait and reuse
    <base_root>/.tmp-<key>-<pid>-<rand>/   a base being built (a crash leaves it;
                                       safe to delete when no run holds the cache)

The inode map is the one ``build_ext4`` proved against the finished base
(every directory listed, each name, inode, type and size compared); on top
of it the base must hold no inode the map does not account for, since a
derivation predicts new inode numbers from the free ones. A base that fails
this is refused (DeriveRefused): its images are built in full.

Trusts: the flat image of P only as far as ``build_ext4`` does; its own
files under ``<key>`` only when ``base.json`` names the same key and the
sha256 of P's entries.jsonl now (anything else is rebuilt under the lock).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from pipeline.base.files import publish_dir, remove_path, temp_path
from pipeline.base.units import DEFAULT_HEADROOM, Headroom
from pipeline.ext4.build import build_ext4, measure_usage, read_flat_entries
from pipeline.ext4.derive.diff import DeriveRefused
from pipeline.ext4.inodes import InodeMap
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.size import INODE_RATIO
from pipeline.flat.image import ENTRIES_NAME, FlatEntry

__all__ = ["BaseImage", "base_key", "base_options", "ensure_base", "spare_inodes",
           "BASE_FORMAT", "MAX_GROWTH_PERCENT", "IMAGE_NAME"]

log = structlog.get_logger(__name__)

# 2: the base's UUID and hash seed come from its layers' content (diff_ids), not
# their blob digests, so a base of the same layers stored otherwise is the same bytes.
BASE_FORMAT = 2
IMAGE_NAME = "base.ext4"
_MAP_NAME = "inodes.json"
_MARKER_NAME = "base.json"
# What a derived image may add to its base, in entries (ext4derive decides with
# the same number): the base keeps spare inodes for it.
MAX_GROWTH_PERCENT = 10
# ...but room for at least this many new entries: 256 KiB of inode table with
# 256-byte inodes, nothing next to any base, and small bases gain the most from it.
MIN_SPARE_GROWTH = 1024
# The first reserved inodes (1-10) and lost+found (11) are in use in every base.
_RESERVED_INODES = frozenset(range(1, 12))


def base_options(options: Ext4Options) -> Ext4Options:
    """The options a base is built with: the image's, at auto size without headroom."""
    return replace(options, size=None, headroom=Headroom())


def base_key(chain_key: str, options: Ext4Options, tools: Mapping[str, str]) -> str:
    """The cache key of the base of chain ``chain_key`` for images with ``options``."""
    # A base is always built in full, and serves images of any size and headroom.
    shared = {k: v for k, v in options.to_dict().items()
              if k not in ("size", "headroom", "derive")}
    record = {"format": BASE_FORMAT, "chain": chain_key, "options": shared,
              "tools": dict(sorted(tools.items())),
              "growth": [MAX_GROWTH_PERCENT, MIN_SPARE_GROWTH]}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def spare_inodes(tree_inodes: int) -> int:
    """Inodes a base keeps free: the entries a derived image may add (at least
    MIN_SPARE_GROWTH), plus the inodes the default headroom promises, so that a derived
    image with default options keeps its promise even when growing the base adds no
    block group (and so no inodes)."""
    growth = max(math.ceil(tree_inodes * MAX_GROWTH_PERCENT / 100), MIN_SPARE_GROWTH)
    promise = max(math.ceil(tree_inodes * DEFAULT_HEADROOM.percent / 100),
                  DEFAULT_HEADROOM.bytes // INODE_RATIO)
    return growth + promise


@dataclass(frozen=True, slots=True)
class BaseImage:
    """A finished, proven base image in the cache."""

    key: str
    root: Path

    @property
    def image(self) -> Path:
        return self.root / IMAGE_NAME

    def inode_map(self, entries: Sequence[FlatEntry]) -> InodeMap:
        """The proven inode of each of P's ``entries`` (the ones it was built from)."""
        numbers = json.loads((self.root / _MAP_NAME).read_text(encoding="ascii"))
        if len(numbers) != len(entries):
            raise AssertionError(f"internal error: base {self.key[:12]} maps {len(numbers)} "
                                 f"entries, its flat image has {len(entries)}")
        return {entry.path: number for entry, number in zip(entries, numbers, strict=True)}


def _entries_sha256(flat_dir: Path) -> str:
    return hashlib.sha256((flat_dir / ENTRIES_NAME).read_bytes()).hexdigest()


def _finished(root: Path, key: str, entries_sha256: str) -> bool:
    try:
        marker = json.loads((root / _MARKER_NAME).read_text(encoding="ascii"))
    except (OSError, ValueError):
        return False
    return (isinstance(marker, dict) and marker.get("format") == BASE_FORMAT
            and marker.get("key") == key and marker.get("entries_sha256") == entries_sha256)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)      # per open file: threads of one process wait too
        yield
    finally:
        os.close(fd)


def ensure_base(flat: Callable[[], Path], base_root: Path, key: str,
                options: Ext4Options, *, seed: str | None = None) -> tuple[Path, BaseImage]:
    """The base chain's flat image (``flat()`` finds or makes it) and its base image under
    ``key``, built unless cached; ``seed`` (default: the key) seeds its UUID and hash seed.

    ``flat`` runs under the key's lock too: parallel builds of a batch would
    otherwise all flatten the same base chain at once, each for nothing but
    the first. Raises DeriveRefused when the finished base's inode map cannot
    be proven.
    """
    base_root.mkdir(parents=True, exist_ok=True)
    final = base_root / key
    with _locked(base_root / f".lock-{key}"):
        flat_dir = flat()
        entries_sha256 = _entries_sha256(flat_dir)
        if _finished(final, key, entries_sha256):
            return flat_dir, BaseImage(key, final)
        tmp = temp_path(final)
        os.mkdir(tmp, 0o755)
        try:
            _build(flat_dir, tmp, key, options, entries_sha256, seed or f"base {key}")
            remove_path(final)    # stale: built from other entries (we hold its lock)
            publish_dir(tmp, final)
        except BaseException:
            remove_path(tmp)
            raise
    return flat_dir, BaseImage(key, final)


def _build(flat_dir: Path, dest: Path, key: str, options: Ext4Options,
           entries_sha256: str, seed: str) -> None:
    entries = read_flat_entries(flat_dir)
    usage = measure_usage(entries, options)
    result = build_ext4(flat_dir, dest / IMAGE_NAME, base_options(options),
                        seed=seed, min_inodes=usage.inodes
                        + spare_inodes(usage.tree_inodes), hash_image=False)
    # build_ext4 proved the map against every directory listing; what derived
    # builds add on top is that nothing else holds an inode (their allocator
    # predicts new numbers from the free ones).
    inodes = result.inode_map
    used = len(used_inodes(inodes))
    problem = (None if result.inodes - result.free_inodes == used else
               f"{result.inodes - result.free_inodes} inodes in use, the map accounts for "
               f"{used}")
    if problem is not None:
        log.warning("ext4.base_map_unproven", key=key, reason=problem,
                    hint="images on this base are built in full; report this with the "
                         "e2fsprogs version")
        raise DeriveRefused(f"the inode map of base {key[:12]} does not check: {problem}")
    (dest / _MAP_NAME).write_text(json.dumps([inodes[e.path] for e in entries]),
                                  encoding="ascii")
    # "chain" (the flat image's name, the base chain's key) tells gc whose base it is.
    marker = {"format": BASE_FORMAT, "key": key, "entries_sha256": entries_sha256,
              "size": result.size, "inodes": result.inodes, "chain": flat_dir.name}
    with open(dest / _MARKER_NAME, "w", encoding="ascii") as f:
        json.dump(marker, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())        # publish_dir fsyncs ``dest`` itself
    log.info("ext4.base_built", key=key, size=result.size, inodes=result.inodes,
              seconds=result.timings.get("total"))


def used_inodes(inodes: InodeMap) -> set[int]:
    """The inodes a base has in use: the reserved ones, lost+found and its tree's."""
    return set(_RESERVED_INODES) | set(inodes.values())


