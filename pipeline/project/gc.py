"""Cache garbage collection: drop what no image in the manifest references.

The cache only grows on its own: every tag bump adds blobs, layer stores and
a flat image, and nothing is ever rewritten in place. ``collect`` removes,
under ``<cache_dir>``:

- ``blobs/<alg>/<hex>`` whose digest is not a layer or config of a kept image;
- ``layers/<hex>`` whose layer digest is not kept;
- ``flat/<chain key>`` whose ordered layer chain is not kept;
- everything under ``base/`` (the base images, ``.lock-<key>`` files and
  ``.tmp-*`` directories of derived builds, which earlier versions made and
  this one never reads), then ``base/`` itself once it is empty;

and the leftovers of interrupted runs there (``.tmp-*``, ``.lock-*``,
``.<hex>.*.partial``, ``.<hex>.lock``). A name of any other shape is not
ours (a user's file, or a directory that should never have been the cache):
it is kept and logged (``gc.foreign_entry``), never removed. The caller decides what is kept (the
lock entries of the images in the manifest) and guarantees that no build is
writing to the cache meanwhile (the run lock keeps other processes out; the
gc task takes the cache exclusively from the other tasks of its own run).

It trusts nothing it finds: names are compared whole, symlinks are removed
as links and never followed, and nothing outside these four directories is
touched (the doit database and the run lock live beside them).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pipeline.base.digest import HEX_LENGTHS, Digest
from pipeline.base.files import remove_path
from pipeline.project.cache import BASE, BLOBS, FLAT, LAYERS, CacheLayout

__all__ = ["Keep", "GcResult", "plan", "collect", "kind_of"]

log = structlog.get_logger(__name__)

# What the pipeline names things in its stores: a content key (hex of a
# registered digest length), or a temporary or lock name made from one.
_KEY = r"(?:[0-9a-f]{64}|[0-9a-f]{128})"
_STORE_NAME = re.compile(rf"{_KEY}|\.tmp-.+|\.lock-{_KEY}")
_NOTHING = re.compile(r"(?!)")
_BLOB_NAME = re.compile(rf"{_KEY}|\.{_KEY}(?:\.[0-9a-f]+)?\.partial|\.{_KEY}\.lock|\.tmp-.+")


def _ours(name: str, shape: re.Pattern[str], where: Path) -> bool:
    if shape.fullmatch(name):
        return True
    log.warning("gc.foreign_entry", path=str(where / name),
                reason="not a name the pipeline creates; left alone")
    return False


@dataclass(frozen=True, slots=True)
class Keep:
    """What must survive: blob digests, layer digests and flat image chain keys."""

    blobs: frozenset[Digest] = frozenset()
    layers: frozenset[Digest] = frozenset()
    chains: frozenset[str] = frozenset()

    @classmethod
    def of(cls, *, blobs: Iterable[Digest] = (), layers: Iterable[Digest] = (),
           chains: Iterable[str] = ()) -> Keep:
        return cls(frozenset(blobs), frozenset(layers), frozenset(chains))


@dataclass(frozen=True, slots=True)
class GcResult:
    removed: tuple[Path, ...] = ()
    freed_bytes: int = 0
    kept: int = 0
    errors: tuple[str, ...] = field(default=())
    kinds: tuple[str, ...] = ()
    """``kind_of`` each removed path, in the same order."""
    sizes: tuple[int, ...] = ()
    """Bytes each removed path held, in the same order (measured before any removal)."""


def kind_of(cache: CacheLayout, path: Path) -> str:
    """blob, layer, flat or base; ``leftover`` for what an interrupted run left."""
    store = path.parent.parent.name if path.parent.parent.name == BLOBS else path.parent.name
    kind = {BLOBS: "blob", LAYERS: "layer", FLAT: "flat", BASE: "base"}.get(store, "leftover")
    return "leftover" if path.name.startswith((".tmp-", ".lock-")) else kind


def _entries(directory: Path) -> Iterator[os.DirEntry[str]]:
    try:
        with os.scandir(directory) as it:
            yield from it
    except FileNotFoundError:
        return


def plan(cache: CacheLayout, keep: Keep) -> tuple[list[Path], int]:
    """The paths ``collect`` would remove, and how many entries it keeps."""
    cache_dir = cache.root
    doomed: list[Path] = []
    kept = 0
    blob_names = {(d.algorithm, d.hex) for d in keep.blobs}
    for alg_entry in _entries(cache_dir / BLOBS):
        if alg_entry.name not in HEX_LENGTHS or not alg_entry.is_dir(follow_symlinks=False):
            _ours(alg_entry.name, _NOTHING, cache_dir / BLOBS)
            continue
        for entry in _entries(Path(alg_entry.path)):
            if (alg_entry.name, entry.name) in blob_names and entry.is_file(follow_symlinks=False):
                kept += 1
            elif _ours(entry.name, _BLOB_NAME, Path(alg_entry.path)):
                doomed.append(Path(entry.path))
    # Nothing under base/ is kept: no build reads a base image any more.
    roots: list[tuple[str, set[str]]] = [(LAYERS, {d.hex for d in keep.layers}),
                                         (FLAT, set(keep.chains)), (BASE, set())]
    for root, names in roots:
        for entry in _entries(cache_dir / root):
            if entry.name in names and entry.is_dir(follow_symlinks=False):
                kept += 1
            elif _ours(entry.name, _STORE_NAME, cache_dir / root):
                doomed.append(Path(entry.path))
    return sorted(doomed), kept


def _size(path: Path) -> int:
    """Bytes held by ``path`` (a file, or a tree walked without following links)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        # Layer files may be hard-linked from flat images: count each name's
        # share so that a freed total never exceeds what the disk gets back.
        return st.st_blocks * 512 // max(st.st_nlink, 1)
    total = 0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in filenames + dirnames:
            try:
                sub = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(sub.st_mode):
                total += sub.st_blocks * 512 // max(sub.st_nlink, 1)
    return total


def collect(cache: CacheLayout, keep: Keep, *, dry_run: bool = False) -> GcResult:
    """Remove everything ``plan`` finds; errors are collected, not raised midway."""
    doomed, kept = plan(cache, keep)
    removed: list[Path] = []
    errors: list[str] = []
    freed = 0
    # Every size before anything goes: removing a layer store first would raise the
    # share of the flat image files linked to it, and a dry run would not match.
    sizes = {path: _size(path) for path in doomed}
    kept_sizes: list[int] = []
    for path in doomed:
        size = sizes[path]
        if not dry_run:
            try:
                remove_path(path)
            except OSError as err:
                errors.append(f"{path}: {err.strerror or err}")
                continue
        removed.append(path)
        kept_sizes.append(size)
        freed += size
        log.debug("gc.removed", path=str(path), bytes=size, dry_run=dry_run)
    if not dry_run:
        _remove_if_empty(cache.root / BASE)
    return GcResult(removed=tuple(removed), freed_bytes=freed, kept=kept, errors=tuple(errors),
                    kinds=tuple(kind_of(cache, p) for p in removed), sizes=tuple(kept_sizes))


def _remove_if_empty(directory: Path) -> None:
    """Remove ``directory`` when nothing is left in it; a foreign entry keeps it, and so
    does anything else in the way (an empty directory costs nothing)."""
    try:
        os.rmdir(directory)
    except OSError as err:
        if err.errno not in (errno.ENOENT, errno.ENOTEMPTY, errno.EEXIST):
            log.debug("gc.kept_directory", path=str(directory), error=str(err))
