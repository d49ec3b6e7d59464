"""Cache garbage collection: drop what no image in the manifest references.

The cache only grows on its own: every tag bump adds blobs, layer stores and
a flat image, and nothing is ever rewritten in place. ``collect`` removes,
under ``<cache_dir>``:

- ``blobs/<alg>/<hex>`` whose digest is not a layer or config of a kept image;
- ``layers/<hex>`` whose layer digest is not kept;
- ``flat/<chain key>`` whose ordered layer chain is not kept;
- ``base/<key>`` (ext4 base images of derived builds, ``ext4base``) whose key
  is not kept, with the ``.lock-<key>`` files and ``.tmp-*`` directories
  there (no run holds the cache, so no builder holds a lock);

and every other entry in those directories, which can only be a leftover of
an interrupted run (temporary names). The caller decides what is kept (the
lock entries of the images in the manifest) and guarantees that no build is
writing to the cache meanwhile (the run lock keeps other processes out; the
gc task takes the cache exclusively from the other tasks of its own run).

It trusts nothing it finds: names are compared whole, symlinks are removed
as links and never followed, and nothing outside these four directories is
touched (the doit database and the run lock live beside them).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from pipeline.base.digest import Digest
from pipeline.base.files import remove_path
from pipeline.project.cache import BASE, BLOBS, FLAT, LAYERS, CacheLayout

__all__ = ["Keep", "GcResult", "plan", "collect"]

log = structlog.get_logger(__name__)



@dataclass(frozen=True, slots=True)
class Keep:
    """What must survive: blob digests, layer digests, flat image chain keys and base
    image keys (``bases`` None: every base, when they could not be worked out)."""

    blobs: frozenset[Digest] = frozenset()
    layers: frozenset[Digest] = frozenset()
    chains: frozenset[str] = frozenset()
    bases: frozenset[str] | None = frozenset()

    @classmethod
    def of(cls, *, blobs: Iterable[Digest] = (), layers: Iterable[Digest] = (),
           chains: Iterable[str] = (), bases: Iterable[str] | None = ()) -> Keep:
        return cls(frozenset(blobs), frozenset(layers), frozenset(chains),
                   None if bases is None else frozenset(bases))


@dataclass(frozen=True, slots=True)
class GcResult:
    removed: tuple[Path, ...] = ()
    freed_bytes: int = 0
    kept: int = 0
    errors: tuple[str, ...] = field(default=())


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
        if not alg_entry.is_dir(follow_symlinks=False):
            doomed.append(Path(alg_entry.path))
            continue
        for entry in _entries(Path(alg_entry.path)):
            if (alg_entry.name, entry.name) in blob_names and entry.is_file(follow_symlinks=False):
                kept += 1
            else:
                doomed.append(Path(entry.path))
    roots: list[tuple[str, set[str]]] = [(LAYERS, {d.hex for d in keep.layers}),
                                         (FLAT, set(keep.chains))]
    if keep.bases is not None:
        roots.append((BASE, set(keep.bases)))
    for root, names in roots:
        for entry in _entries(cache_dir / root):
            if entry.name in names and entry.is_dir(follow_symlinks=False):
                kept += 1
            else:
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
    for path in doomed:
        size = _size(path)
        if not dry_run:
            try:
                remove_path(path)
            except OSError as err:
                errors.append(f"{path}: {err.strerror or err}")
                continue
        removed.append(path)
        freed += size
        log.debug("gc.removed", path=str(path), bytes=size, dry_run=dry_run)
    return GcResult(removed=tuple(removed), freed_bytes=freed, kept=kept, errors=tuple(errors))
