"""Derived ext4 builds: an image whose top layers are small next to a shared base chain is
made from a copy of that chain's cached ext4 plus the difference its top layers make.

Deterministic by construction: whether and how an image is derived is a
pure function of its layers' content and its options, never of what the
cache holds or which other images are built. Each step is one too: the base
is content-keyed and built by the full path; the diff depends on content
only (``ext4diff``); every fallback below is decided from content alone.

1. ``choose_build`` (pure): for a chain L1..Ln, the smallest k < n such that
   L(k+1)..Ln hold at most MAX_TOP_ENTRIES_PERCENT of the entries and
   MAX_TOP_BYTES_PERCENT of the content bytes of L1..Lk, with L1..Lk at least
   MIN_BASE_ENTRIES entries: ``DerivedBuild(base_chain, base_key)``; none:
   ``FullBuild``.
2. ``ext4base.ensure_base``: the base image of the base chain's flat image,
   cached under ``base_key``, with its proven inode map.
3. ``derive_ext4``: plan C's size as the full build would (``ext4grow``),
   diff P and C (``ext4diff``), copy the base sparsely beside the output,
   grow it with resize2fs, apply the diff in one debugfs run
   (``ext4apply``), prove the changed directories in one more, read every
   inode of C back and run the full build's ``fixup_script`` over all of C's
   entries (plus link counts), so every inode ends exactly as declared
   whatever debugfs did to it; then the image's own UUID (tune2fs), the same
   strict ``e2fsck -fn``, free-space promise, sha256 and atomic rename as
   ``build_ext4``. Anything it cannot do exactly (DeriveRefused: a shrinking
   tree, too few inodes, a name debugfs cannot address, a base whose map
   did not prove...) builds the image in full instead, with the reason logged.

For the mkfs task (``build_image`` does all of it; the native builder never derives)::

    native       -> ext4.nativebuild.build_native(flat, layers_root, output, options, seed=seed)
    plan = choose_build(layer_stats(layers_root, chain), options, tools)
    FullBuild    -> build_ext4(flat, output, options, seed=seed)
    DerivedBuild -> flat_base, base = ensure_base(
                        lambda: flatten_image(<stores of plan.base_chain>, flat_root),
                        base_root, plan.base_key, options)
                    derive_ext4(base, flat_base, flat, output, options, seed=seed)

``tools`` must be ``ext4.tools.tool_versions()`` (mkfs.ext4, debugfs, e2fsck, resize2fs
and tune2fs: they all shape derived bytes). gc must keep, for each image of the
manifest, ``flat/<chain_key(plan.base_chain)>`` (derive reads P's entries
and staging tree) and ``<base_root>/<plan.base_key>``; ``<base_root>/.lock-*``
and ``.tmp-*`` are leftovers when no run holds the cache.
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import structlog

from pipeline.errors import ToolError
from pipeline.ext4.build import (
    Ext4Result,
    build_ext4,
    derive_uuids,
    measure_usage,
    plan_for,
    read_flat_entries,
)
from pipeline.ext4.debugfs import DirectoryListing, run_debugfs
from pipeline.ext4.derive.apply import (
    MAX_LINKS,
    apply_script,
    declared_links,
    expected_listings,
    link_count_fixups,
)
from pipeline.ext4.derive.base import (
    MAX_GROWTH_PERCENT,
    BaseImage,
    base_key,
    ensure_base,
    used_inodes,
)
from pipeline.ext4.derive.diff import DeriveRefused, InodeAllocator, TreeDiff, diff_trees
from pipeline.ext4.derive.grow import (
    BaseGeometry,
    FreeBlocks,
    copy_sparse,
    plan_grown_size,
    resize,
    set_identity,
)
from pipeline.ext4.disk import XATTR_MAGIC, superblock_counts
from pipeline.ext4.fixup import clamped_times, fixup_script
from pipeline.ext4.inodes import listing_error
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.output import ImageOutput, Sha256Thread
from pipeline.ext4.readback import read_inodes
from pipeline.ext4.size import BLOCK_SIZE, SizePlan
from pipeline.ext4.tools import fake_time_env, fsck_image, tool_versions
from pipeline.ext4.treelimits import check_tree
from pipeline.flat.image import FlatEntry, chain_key

__all__ = ["LayerStats", "FullBuild", "DerivedBuild", "choose_build", "layer_stats",
           "derive_ext4", "build_image",
           "MAX_TOP_ENTRIES_PERCENT", "MAX_TOP_BYTES_PERCENT", "MIN_BASE_ENTRIES"]

log = structlog.get_logger(__name__)

# The top layers may add at most this share of the base's entries: beyond it a
# derived build no longer saves much (debugfs creates files one command at a
# time; mkfs -d is faster per file), and the base keeps spare inodes for
# exactly this much (ext4base.spare_inodes).
MAX_TOP_ENTRIES_PERCENT = MAX_GROWTH_PERCENT
# ...and at most this share of its content bytes: the copy of the base costs
# its bytes, so deriving pays while the top is small next to it.
MAX_TOP_BYTES_PERCENT = 25
# A base of fewer entries builds in full about as fast as a derive copies,
# grows, applies and checks it (fixed costs of ~0.15 s), so it is not cached.
MIN_BASE_ENTRIES = 1000


@dataclass(frozen=True, slots=True)
class LayerStats:
    """What the decision reads of one layer: its digest and its layer store's counts."""

    digest: str
    entries: int
    content_bytes: int


@dataclass(frozen=True, slots=True)
class FullBuild:
    """Build the image from its own flat image (``build_ext4``)."""


@dataclass(frozen=True, slots=True)
class DerivedBuild:
    """Derive the image from the cached base image of ``base_chain``."""

    base_chain: tuple[str, ...]
    base_key: str


def choose_build(layers: Sequence[LayerStats], options: Ext4Options,
               tools: Mapping[str, str]) -> FullBuild | DerivedBuild:
    """How to build an image of these layers (oldest first); pure, see the module docstring."""
    if not options.derive or options.builder == "native":
        return FullBuild()
    for k in range(1, len(layers)):
        base, top = layers[:k], layers[k:]
        base_entries = sum(layer.entries for layer in base)
        base_bytes = sum(layer.content_bytes for layer in base)
        if (base_entries >= MIN_BASE_ENTRIES
                and sum(layer.entries for layer in top) * 100
                <= base_entries * MAX_TOP_ENTRIES_PERCENT
                and sum(layer.content_bytes for layer in top) * 100
                <= base_bytes * MAX_TOP_BYTES_PERCENT):
            chain = tuple(layer.digest for layer in base)
            return DerivedBuild(chain, base_key(chain_key(chain), options, tools))
    return FullBuild()


def layer_stats(layers_root: Path, chain: Sequence[str]) -> tuple[LayerStats, ...]:
    """The stats of each finished layer store of ``chain``."""
    from pipeline.layers.store import LayerStore

    stores = [LayerStore.open(layers_root, digest) for digest in chain]
    return tuple(LayerStats(s.digest, s.entries_count, s.content_bytes) for s in stores)


def build_image(*, layers_root: Path, flat_root: Path, base_root: Path, chain: Sequence[str],
                flat_dir: Path, output: Path, options: Ext4Options, seed: str,
                tools: Mapping[str, str]) -> Ext4Result:
    """Build ``output`` for the image of ``chain`` (flat image ``flat_dir``): with the native
    writer from the layer stores (``ext4.nativebuild``), or with mkfs, derived when
    ``choose_build`` says so; every step as in the module docstring."""
    if options.builder == "native":
        from pipeline.ext4.nativebuild import build_native

        return build_native(flat_dir, layers_root, output, options, seed=seed)
    plan = choose_build(layer_stats(layers_root, chain), options, tools)
    if isinstance(plan, DerivedBuild):
        from pipeline.flat.staging import flatten_image
        from pipeline.layers.store import LayerStore

        stores = [LayerStore.open(layers_root, digest) for digest in plan.base_chain]
        # Seeded by content (the diff_ids), like a full build: the same layers stored
        # compressed or not (registry, docker-archive) give the same base bytes.
        content = base_key(chain_key([store.diff_id for store in stores]), options, tools)
        try:
            flat_base, base = ensure_base(lambda: flatten_image(stores, flat_root, staging=True),
                                          base_root,
                                          plan.base_key, options, seed=f"base {content}")
        except DeriveRefused as refused:
            log.info("ext4.derive_refused", output=str(output), reason=str(refused))
        else:
            return derive_ext4(base, flat_base, flat_dir, output, options, seed=seed)
    return build_ext4(flat_dir, output, options, seed=seed)


def derive_ext4(base: BaseImage, flat_base: Path, flat_dir: Path, output: Path,
                options: Ext4Options, *, seed: str) -> Ext4Result:
    """``output`` for the flat image ``flat_dir``, derived from ``base`` (built from the flat
    image ``flat_base``); the same image in full when it cannot be derived exactly."""
    started = time.monotonic()
    flat_base, flat_dir, output = Path(flat_base), Path(flat_dir), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.unlink(missing_ok=True)
    try:
        return _Derivation(base, flat_base, flat_dir, output, options, seed, started).run()
    except DeriveRefused as refused:
        log.info("ext4.derive_refused", output=str(output), base=base.key[:12],
                 reason=str(refused))
        return build_ext4(flat_dir, output, options, seed=seed)


class _Derivation:
    def __init__(self, base: BaseImage, flat_base: Path, flat_dir: Path, output: Path,
                 options: Ext4Options, seed: str, started: float) -> None:
        self.base, self.flat_base, self.flat_dir = base, flat_base, flat_dir
        self.output, self.options, self.seed = output, options, seed
        self.timings: dict[str, float] = {}
        self.clock = started
        self.started = started

    def lap(self, step: str) -> None:
        now = time.monotonic()
        self.timings[step] = round(now - self.clock, 3)
        self.clock = now

    def run(self) -> Ext4Result:
        options = self.options
        versions = tool_versions()
        entries = read_flat_entries(self.flat_dir)
        check_tree(entries)  # what the derivation adds, as a full build would check it
        base_entries = read_flat_entries(self.flat_base)
        base_map = self.base.inode_map(base_entries)
        usage = measure_usage(entries, options)
        full = plan_for(usage, options)
        geometry = BaseGeometry.read(self.base.image)
        blocks = plan_grown_size(geometry, usage, full, options)
        allocator = InodeAllocator(used_inodes(base_map), count=geometry.inodes(blocks),
                                   per_group=geometry.inodes_per_group)
        diff = diff_trees(base_entries, base_map, entries, flat_p=self.flat_base,
                          flat_c=self.flat_dir, allocator=allocator)
        links = declared_links(entries, diff.inodes)
        if max(links.values()) >= MAX_LINKS:
            raise DeriveRefused(f"an inode of the image has {max(links.values())} links")
        self.lap("plan")

        with ImageOutput(self.output) as out, \
                tempfile.TemporaryDirectory(prefix="rootfs-derive-") as scratch_name:
            result = self._build(out.path, out.fd, Path(scratch_name), entries, diff, links,
                                 geometry, blocks, full, versions)
            out.publish()
        timings = dict(result.timings, total=round(time.monotonic() - self.started, 3))
        log.debug("ext4.derived", path=str(self.output), base=self.base.key[:12],
                  kept=len(diff.kept), created=len(diff.creations), freed=len(diff.frees),
                  **{f"seconds_{k}": v for k, v in timings.items()})
        return replace(result, path=self.output, timings=timings, derived_from=self.base.key)

    def _build(self, tmp: Path, fd: int, scratch: Path, entries: Sequence[FlatEntry],
               diff: TreeDiff, links: Mapping[int, int], geometry: BaseGeometry, blocks: int,
               full: SizePlan, versions: Mapping[str, str]) -> Ext4Result:
        copy_sparse(self.base.image, fd)
        self.lap("copy")
        if blocks > geometry.blocks:
            resize(tmp, blocks)
        self.lap("resize")

        freed = read_inodes(tmp, diff.frees)
        for number, fields in freed.items():
            if fields.xattr_block and _xattr_block_shared(tmp, fields.xattr_block):
                raise DeriveRefused(f"inode {number} of the base shares its xattr block")
        script_path = scratch / "apply.debugfs"
        apply_script(diff, self.flat_dir, freed, FreeBlocks.read(tmp)).write(script_path)
        try:
            run_debugfs(tmp, script=script_path, write=True, env=fake_time_env(), stdout=False)
        except ToolError as err:
            log.warning("ext4.derive_apply_failed", output=str(self.output), error=str(err))
            raise DeriveRefused(f"debugfs could not apply the diff: {err}") from err
        self.lap("apply")

        expected = expected_listings(diff, entries)
        listing = DirectoryListing(tmp, sorted(expected), scratch)
        try:
            current = read_inodes(tmp, set(diff.inodes.values()))
            fixup = fixup_script(entries, diff.inodes, current, scratch=scratch,
                                 large_inode=self.options.inode_size > 128)
            link_count_fixups(fixup, links, current)
        except BaseException:
            listing.close()
            raise
        problem = listing_error(listing.result(), expected)
        if problem is not None:
            log.warning("ext4.derive_check_failed", output=str(self.output), reason=problem,
                        hint="the diff did not land as predicted; the image is built in full "
                             "(report this with the e2fsprogs version)")
            raise DeriveRefused(f"the changed directories do not list as predicted: {problem}")
        fixup_path = scratch / "fixup.debugfs"
        fixup.write(fixup_path)
        self.lap("map")
        run_debugfs(tmp, script=fixup_path, write=True, env=fake_time_env(), stdout=False)
        self.lap("fixup")
        fs_uuid = derive_uuids(self.seed)[0]
        set_identity(tmp, fs_uuid=fs_uuid, reserved_blocks=math.floor(
            blocks * self.options.reserved_percent / 100))
        self.lap("uuid")

        hashing = Sha256Thread(tmp)
        try:
            try:
                fsck_image(tmp)
            except ToolError as err:
                log.warning("ext4.derive_fsck_failed", output=str(self.output), error=str(err))
                raise DeriveRefused(f"the derived image does not check clean: {err}") from err
            counts = superblock_counts(tmp)
            free_bytes = (counts["free_blocks"] - counts["reserved_blocks"]) * BLOCK_SIZE
            if counts["blocks"] != blocks or (self.options.size is None and (
                    free_bytes < full.promised_free_bytes
                    or counts["free_inodes"] < full.promised_free_inodes)):
                log.warning("ext4.derive_promise_failed", output=str(self.output),
                            blocks=counts["blocks"], free_bytes=free_bytes,
                            free_inodes=counts["free_inodes"])
                raise DeriveRefused("the derived image breaks the size plan's promise")
            os.fsync(fd)
            self.lap("fsck")
            digest = hashing.result()
        finally:
            hashing.cancel()
        self.lap("hash")
        return Ext4Result(path=tmp, size=blocks * BLOCK_SIZE, sha256=digest, uuid=fs_uuid,
                          inodes=counts["inodes"], free_bytes=free_bytes,
                          free_inodes=counts["free_inodes"], tool_versions=versions,
                          timings=self.timings, inode_map=diff.inodes,
                          clamped_times=clamped_times(
                              entries, large_inode=self.options.inode_size > 128))


def _xattr_block_shared(image: Path, block: int) -> bool:
    """Whether an external xattr block is referenced by more than one inode (h_refcount)."""
    with open(image, "rb") as f:
        magic: int
        refcount: int
        magic, refcount = struct.unpack("<II", os.pread(f.fileno(), 8, block * BLOCK_SIZE))
    return magic != XATTR_MAGIC or refcount != 1
