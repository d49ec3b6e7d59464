"""Build a bootable, reproducible ext4 image from a flat image, without root.

``build_ext4`` runs, in order: size planning (ext4size; a fixed size too
small fails here), ``mkfs.ext4 -d`` on the staging tree into a sparse
temporary file beside the output (the inode numbers it will hand out are
predicted meanwhile), the inode mapping checked in one ``debugfs`` run and
one ``debugfs -w`` fixup pass (ext4fixup), a strict ``e2fsck -fn`` (any
message beyond its pass headers fails the build) while another thread
hashes the finished image, a check that the free space promised for auto
sizes is really there, then a rename to the final path. On any failure
nothing is left at the final path.

Reproducible by construction: the UUID and directory hash seed derive from
``seed``; superblock and mke2fs-made inode times are pinned through
E2FSPROGS_FAKE_TIME and SOURCE_DATE_EPOCH; every tree inode's times come from
its entry; mke2fs reads our own mke2fs.conf, never the host's, and runs in the
C locale (the order ``-d`` walks directories in depends on it). The same flat
image gives the same bytes, as root or not, today or next year.

Trusts: the flat image's entries for metadata (ext4fixup checks the staging
tree against them), nothing printed by debugfs or e2fsck.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import structlog

from pipeline.base.units import format_size
from pipeline.errors import Ext4Error, ToolError
from pipeline.ext4.debugfs import run_debugfs, tool_env
from pipeline.ext4.disk import superblock_counts
from pipeline.ext4.fixup import clamped_times, plan_fixups
from pipeline.ext4.inodes import predict
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.output import ImageOutput, Sha256Thread
from pipeline.ext4.size import BLOCK_SIZE, SizePlan, TreeUsage, measure_tree, plan_size
from pipeline.ext4.tools import (
    BAD_BIG_FILES,
    TWO_GIB,
    fake_time_env,
    fsck_image,
    tool_versions,
    version_tuple,
)
from pipeline.ext4.treelimits import check_tree
from pipeline.flat.image import (
    ENTRIES_NAME,
    HEADER_NAME,
    ROOTFS_NAME,
    FileType,
    FlatEntry,
    read_entries,
    read_header,
)

__all__ = ["Ext4Result", "build_ext4", "derive_uuids", "read_flat_entries", "measure_usage",
           "plan_for", "MAX_NAME_BYTES"]

log = structlog.get_logger(__name__)

MAX_NAME_BYTES = 255                        # ext4 directory entries (name_len is a byte)
_MKE2FS_CONF = """\
[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tenable_periodic_fsck = 0
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\trootfs = {
\t\tinode_ratio = 16384
\t}
"""
@dataclass(frozen=True, slots=True)
class Ext4Result:
    """What a build produced; the doit layer writes out/<name>.json from it."""

    path: Path
    size: int
    """Size of the image in bytes (the filesystem size; the file is sparse)."""
    sha256: str
    """Hex sha256 of the whole image file."""
    uuid: str
    inodes: int
    free_bytes: int
    """Blocks free for non-root users after the build, in bytes."""
    free_inodes: int
    tool_versions: Mapping[str, str]
    timings: Mapping[str, float] = field(default_factory=dict)
    """Seconds per step: plan, mkfs (with the inode prediction beside it), map (the
    listing check, reading inodes back, the script), fixup (debugfs -w), fsck (with
    the hash running beside it), hash (what remained of it after fsck), total."""
    clamped_times: tuple[str, ...] = ()
    """Paths whose time lies outside what the inode can hold, stored clamped to its range."""


def derive_uuids(seed: str) -> tuple[str, str]:
    """(filesystem UUID, directory hash seed) for a build seed."""
    def one(purpose: str) -> str:
        digest = hashlib.sha256(f"rootfs-pipeline ext4 {purpose}\0{seed}".encode()).digest()
        return str(uuid.UUID(bytes=digest[:16], version=4))
    return one("uuid"), one("hash_seed")


def build_ext4(flat_dir: Path, output: Path, options: Ext4Options, *,
               seed: str) -> Ext4Result:
    """Build ``output`` from the flat image at ``flat_dir``; see the module docstring."""
    started = time.monotonic()
    flat_dir, output = Path(flat_dir), Path(output)
    versions = tool_versions()
    with ImageOutput(output) as out, \
            tempfile.TemporaryDirectory(prefix="rootfs-ext4-") as scratch_name:
        result = _build(flat_dir, out.path, out.fd, Path(scratch_name), options, seed,
                        versions, started)
        out.publish()
    timings = dict(result.timings, total=round(time.monotonic() - started, 3))
    log.debug("ext4.built", path=str(output), size=result.size, sha256=result.sha256,
             **{f"seconds_{k}": v for k, v in timings.items()})
    return replace(result, path=output, timings=timings)


def _build(flat_dir: Path, image: Path, fd: int, scratch: Path, options: Ext4Options,
           seed: str, versions: Mapping[str, str], started: float) -> Ext4Result:
    timings: dict[str, float] = {}
    clock = [started]

    def lap(step: str) -> None:
        now = time.monotonic()
        timings[step] = round(now - clock[0], 3)
        clock[0] = now

    entries = read_flat_entries(flat_dir)
    check_tree(entries)  # before any work: mkfs.ext4 cannot take every tree
    if version_tuple(versions["mkfs.ext4"]) == BAD_BIG_FILES and \
            any(e.type is FileType.REGULAR and e.size > TWO_GIB for e in entries):
        raise ToolError("mkfs.ext4", f"version {versions['mkfs.ext4']} corrupts files over "
                                     "2 GiB; install e2fsprogs 1.47.4 or later")
    plan = plan_for(measure_usage(entries, options), options)
    lap("plan")

    fs_uuid, hash_seed = derive_uuids(seed)
    try:
        os.ftruncate(fd, plan.size)
    except OSError as err:
        if err.errno not in (errno.EFBIG, errno.EINVAL):
            raise
        raise Ext4Error(host_too_small(image, plan.size, err)) from None
    # The inode prediction is pure Python on the entries: it runs while mkfs works.
    prediction = _mkfs(flat_dir / ROOTFS_NAME, image, scratch, options, plan.layout.blocks,
                       plan.layout.inodes, plan.layout.journal_blocks, fs_uuid, hash_seed,
                       while_running=lambda: predict(entries))
    lap("mkfs")

    script = plan_fixups(image, entries, flat_dir, scratch, prediction=prediction,
                         large_inode=options.inode_size > 128)
    script_path = scratch / "fixup.debugfs"
    script.write(script_path)
    lap("map")
    run_debugfs(image, script=script_path, write=True, env=fake_time_env(), stdout=False)
    lap("fixup")

    # The image is final: hash it on another thread (hashlib releases the GIL
    # on large buffers) while e2fsck checks it read-only.
    hashing = Sha256Thread(image)
    try:
        fsck_image(image)
        counts = superblock_counts(image)
        free_bytes = (counts["free_blocks"] - counts["reserved_blocks"]) * BLOCK_SIZE
        if options.size is None and (free_bytes < plan.promised_free_bytes
                                     or counts["free_inodes"] < plan.promised_free_inodes):
            raise AssertionError(
                f"internal error: auto size {format_size(plan.size)} left {free_bytes} bytes "
                f"and {counts['free_inodes']} inodes free, promised "
                f"{plan.promised_free_bytes} and {plan.promised_free_inodes}")
        lap("fsck")
        digest = hashing.result()
    finally:
        hashing.cancel()
    lap("hash")
    return Ext4Result(path=image, size=plan.size, sha256=digest, uuid=fs_uuid,
                      inodes=counts["inodes"], free_bytes=free_bytes,
                      free_inodes=counts["free_inodes"], tool_versions=versions,
                      timings=timings,
                      clamped_times=clamped_times(entries, large_inode=options.inode_size > 128))


def measure_usage(entries: list[FlatEntry], options: Ext4Options) -> TreeUsage:
    """What the tree needs (``ext4size.measure_tree``) with these options' inodes."""
    return measure_tree(entries, inode_size=options.inode_size, csum=options.metadata_csum)


def plan_for(usage: TreeUsage, options: Ext4Options) -> SizePlan:
    """The size plan a full build of a tree of ``usage`` makes with ``options``."""
    return plan_size(usage, size=options.size, headroom=options.headroom,
                     inode_size=options.inode_size, journal=options.journal,
                     reserved_percent=options.reserved_percent, desc_size=options.desc_size,
                     resize_inode=options.resize_inode, sparse_super=options.sparse_super)


def read_flat_entries(flat_dir: Path) -> list[FlatEntry]:
    """The entries, checked for the shape the mapping relies on."""
    rebuild = "delete this flat image so flatten rebuilds it"
    try:
        read_header(flat_dir / HEADER_NAME)
        entries = list(read_entries(flat_dir / ENTRIES_NAME))
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise Ext4Error(f"flat image {flat_dir} cannot be read ({err}); {rebuild}") from err
    if not entries or entries[0].path != "" or entries[0].type is not FileType.DIRECTORY:
        raise Ext4Error(f"flat image {flat_dir}: entries.jsonl must start with the root "
                        f"directory (path \"\"); {rebuild}")
    seen: set[str] = set()
    directories: set[str] = set()
    for entry in entries:
        if entry.path in seen:
            raise Ext4Error(f"flat image {flat_dir}: path {entry.path!r} appears twice in "
                            f"entries.jsonl; {rebuild}")
        parent, _, name = entry.path.rpartition("/")
        if entry.path and (parent not in directories or name in ("", ".", "..")):
            raise Ext4Error(f"flat image {flat_dir}: entry {entry.path!r} has no parent "
                            f"directory before it; {rebuild}")
        if len(os.fsencode(name)) > MAX_NAME_BYTES:
            raise Ext4Error(f"{entry.path!r}: the name is longer than ext4's "
                            f"{MAX_NAME_BYTES} bytes; shorten it in the image")
        seen.add(entry.path)
        if entry.type is FileType.DIRECTORY:
            directories.add(entry.path)
    return entries


_T = TypeVar("_T")


def host_too_small(image: Path, size: int, err: OSError) -> str:
    """The message for an image larger than the output filesystem allows in one file."""
    return (f"the filesystem holding {str(image.parent)!r} cannot hold a {format_size(size)}"
            f" file ({err.strerror}); choose a smaller `size` or an output_dir on a filesystem"
            " that allows larger files")


def host_full(image: Path, size: int) -> str:
    """The message for a full output filesystem: where, how much is needed and free."""
    try:
        st = os.statvfs(image.parent)
        free = f"{format_size(st.f_bavail * st.f_frsize)} is free there"
    except OSError:
        free = "its free space is unknown"
    return (f"the output filesystem holding {str(image.parent)!r} is full: the image needs up"
            f" to {format_size(size)} and {free}; free some space or set output_dir elsewhere")


def _mkfs(staging: Path, image: Path, scratch: Path, options: Ext4Options, blocks: int,
          inodes: int, journal_blocks: int, fs_uuid: str, hash_seed: str, *,
          while_running: Callable[[], _T]) -> _T:
    """Run mkfs.ext4 -d; return what ``while_running`` (called meanwhile) returned."""
    conf = scratch / "mke2fs.conf"
    conf.write_text(_MKE2FS_CONF, encoding="ascii")
    features = list(options.features)
    if options.journal:
        journal = ["-J", f"size={journal_blocks * BLOCK_SIZE // 1024**2}"]
    else:
        journal, features = [], ["^has_journal", *features]
    argv = ["mkfs.ext4", "-F", "-q", "-T", "rootfs", "-b", str(BLOCK_SIZE),
            "-I", str(options.inode_size), "-N", str(inodes),
            "-m", f"{options.reserved_percent:g}", "-U", fs_uuid, "-L", options.label,
            *(["-O", ",".join(features)] if features else []), *journal,
            # nodiscard + eager init: the same bytes and group flags whether or
            # not the output filesystem can punch holes. Eager init costs no
            # measurable time (mkfs is bound by its per-file work: 0.91 s either
            # way for 7,000 files); lazy_itable_init=1 would clear the groups'
            # ITABLE_ZEROED flag, so the kernel would zero the inode tables at
            # first mount, and a lazily initialised journal carries the small
            # risk mke2fs(8) documents if the image is written onto a used disk.
            "-E", (f"root_owner=0:0,hash_seed={hash_seed},nodiscard,lazy_itable_init=0,"
                   "lazy_journal_init=0"),
            "-d", str(staging), str(image), str(blocks)]
    env = tool_env({"MKE2FS_CONFIG": str(conf), **fake_time_env()})
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                env=env)
        try:
            result = while_running()
        finally:
            returncode = proc.wait()         # also when while_running failed: no orphan
        out.seek(0)
        stderr = out.read().decode("utf-8", "backslashreplace")
    if returncode != 0:
        if "No space left on device" in stderr:
            # ``image`` is our half-written temporary (removed on the way out):
            # empty it first, or its blocks would be reported as used.
            os.truncate(image, 0)
            raise Ext4Error(host_full(image, blocks * BLOCK_SIZE))
        if "Could not allocate" in stderr:
            raise Ext4Error(f"mkfs.ext4 ran out of space in {format_size(blocks * BLOCK_SIZE)} "
                            f"while copying the tree; raise `size` or use \"auto\"")
        raise ToolError("mkfs.ext4", f"building {image.name} from {staging} failed",
                        returncode=returncode, stderr=stderr)
    for line in stderr.splitlines():
        if line.strip():
            log.warning("ext4.mkfs_message", message=line.strip())
    return result


