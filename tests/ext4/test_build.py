"""Both ext4 builders end to end: the mkfs builder (``build_ext4``: real mkfs.ext4, debugfs
and e2fsck) and the native one (``build_native``: the writer, from a layer store), read
back independently.

Flat images are made here from a small spec (``make_flat``): ``entries.jsonl`` and
``flat.json``, each regular file's bytes in a layer store the entries point into
(what the native builder reads), and for the mkfs builder the staging tree the way
flatten lays it out (directories, regular files, hard links, symlinks, fifos via
mkfifo, empty placeholders for devices). Every built image is read back with
tests/harness/ext4reader.py, which shares no code with either builder, and compared
entry by entry. Tests of what the image holds take the ``builder`` fixture and run
for both; tests of mkfs's own machinery (inode prediction, listings, debugfs) run
for mkfs only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

import pipeline.ext4.fixup
import pipeline.ext4.inodes
from pipeline.base.units import Headroom, MiB, format_size
from pipeline.errors import Ext4Error
from pipeline.ext4.build import _MKE2FS_CONF, Ext4Result, build_ext4, derive_uuids
from pipeline.ext4.debugfs import DirectoryListing
from pipeline.ext4.disk import FIRST_INO
from pipeline.ext4.fixup import time_fields
from pipeline.ext4.inodes import InodeMap, expected_listings, listing_error, predict_inodes
from pipeline.ext4.nativebuild import build_native
from pipeline.ext4.options import (
    DEFAULT_FEATURES,
    INODE_SIZES,
    TOGGLABLE_FEATURES,
    Ext4Options,
)
from pipeline.ext4.output import sha256_sparse
from pipeline.ext4.readback import read_inodes
from pipeline.ext4.size import TreeUsage, layout, plan_size
from pipeline.ext4.tools import FS_EPOCH, tool_versions
from pipeline.flat.image import (
    ENTRIES_NAME,
    HEADER_NAME,
    ROOTFS_NAME,
    FileType,
    FlatEntry,
    FlatHeader,
    read_entries,
    write_entries,
    write_header,
)
from pipeline.layers.store import PACK_NAME
from tests.harness.debian import debian_like
from tests.harness.ext4reader import Ext4Image, Node

MTIME_NS = 1_700_000_000_123_456_789
NOBODY = 65534
CHAIN = ("sha256:" + "ab" * 32,)
STORE_NAME = "store"
"""The layers root inside a test flat image: one layer store (CHAIN's) holds its files."""
BUILDERS = ("native", "mkfs")


@pytest.fixture(params=BUILDERS)
def builder(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs once per ext4 builder."""
    return str(request.param)


# -- flat image spec ------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One path of a test image; ``link`` names an earlier regular file to hard-link."""

    path: str
    type: FileType
    mode: int
    uid: int = 0
    gid: int = 0
    mtime_ns: int = MTIME_NS
    data: bytes = b""
    target: str | None = None
    rdev: tuple[int, int] | None = None
    xattrs: dict[str, bytes] = field(default_factory=dict)
    link: str | None = None


def d(path: str, mode: int = 0o755, **kw: object) -> Spec:
    return Spec(path, FileType.DIRECTORY, mode, **kw)  # type: ignore[arg-type]


def f(path: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> Spec:
    return Spec(path, FileType.REGULAR, mode, data=data, **kw)  # type: ignore[arg-type]


def hl(path: str, link: str) -> Spec:
    return Spec(path, FileType.REGULAR, 0, link=link)


def sym(path: str, target: str, **kw: object) -> Spec:
    return Spec(path, FileType.SYMLINK, 0o777, target=target, **kw)  # type: ignore[arg-type]


def fifo(path: str, mode: int = 0o600, **kw: object) -> Spec:
    return Spec(path, FileType.FIFO, mode, **kw)  # type: ignore[arg-type]


def cdev(path: str, major: int, minor: int, mode: int = 0o666, **kw: object) -> Spec:
    return Spec(path, FileType.CHAR, mode, rdev=(major, minor), **kw)  # type: ignore[arg-type]


def bdev(path: str, major: int, minor: int, mode: int = 0o660, **kw: object) -> Spec:
    return Spec(path, FileType.BLOCK, mode, rdev=(major, minor), **kw)  # type: ignore[arg-type]


def _order(path: str) -> tuple[bytes, ...]:
    # Parents before children, siblings in byte order: depth-first, as mkfs -d walks.
    return tuple(os.fsencode(p) for p in path.split("/")) if path else ()


def make_flat(dest: Path, specs: Sequence[Spec], *, root: Spec | None = None,
              staging: bool = True) -> Path:
    """Write a flat image (entries.jsonl, flat.json, the layer store under store/ and, when
    ``staging``, rootfs/) for ``specs`` at ``dest``.

    Host modes are 0755/0644 whatever the spec says: the builder must take
    metadata from entries.jsonl only, and an unprivileged builder must be able
    to read everything.
    """
    rootfs = dest / ROOTFS_NAME
    rootfs.mkdir(parents=True)
    os.chmod(dest, 0o755)
    os.chmod(rootfs, 0o755)
    store = dest / STORE_NAME / CHAIN[0].partition(":")[2]
    store.mkdir(parents=True)
    for parent in (dest / STORE_NAME, store):
        os.chmod(parent, 0o755)
    pack = bytearray()
    contents: dict[str, tuple[int, int]] = {}
    root = root or d("")
    by_path = {s.path: s for s in specs}
    groups: dict[str, int] = {}
    for s in specs:
        if s.link is not None:
            groups.setdefault(s.link, len(groups) + 1)
    entries = [_entry(root, None, b"")]
    ordered = sorted(specs, key=lambda s: _order(s.path))
    for s in ordered:
        host = rootfs / s.path
        if s.link is not None:
            continue
        if s.type is FileType.DIRECTORY:
            host.mkdir(mode=0o755)
        elif s.type is FileType.SYMLINK:
            os.symlink(os.fsencode(s.target or ""), host)
        elif s.type is FileType.FIFO:
            os.mkfifo(host, 0o644)
        else:
            host.write_bytes(s.data)
            os.chmod(host, 0o644)
    for s in ordered:                       # hard links once their targets exist
        if s.link is not None:
            os.link(rootfs / s.link, rootfs / s.path)
        base = by_path[s.link] if s.link is not None else s
        if base.type is FileType.REGULAR and base.data and base.path not in contents:
            contents[base.path] = (0, len(pack))
            pack += base.data
        entries.append(replace(_entry(base, groups.get(base.path), base.data), path=s.path,
                               content=contents.get(base.path)))
    (store / PACK_NAME).write_bytes(pack)
    if not staging:
        shutil.rmtree(rootfs)
    write_entries(dest / ENTRIES_NAME, entries)
    distinct = {(e.link_group or -i) for i, e in enumerate(entries)}
    write_header(dest / HEADER_NAME, FlatHeader(
        chain=CHAIN, entries=len(entries), inodes=len(distinct),
        directories=sum(e.type is FileType.DIRECTORY for e in entries),
        regular_bytes=sum(len(s.data) for s in specs if s.type is FileType.REGULAR
                          and s.link is None)))
    return dest


def _entry(s: Spec, group: int | None, data: bytes) -> FlatEntry:
    return FlatEntry(path=s.path, type=s.type, mode=s.mode, uid=s.uid, gid=s.gid,
                     mtime_ns=s.mtime_ns, xattrs=tuple(sorted(s.xattrs.items())),
                     size=len(data) if s.type is FileType.REGULAR else 0,
                     target=s.target, rdev=s.rdev, link_group=group)


# -- comparing an image with its spec ---------------------------------------------


def expected_nodes(specs: Sequence[Spec], root: Spec | None = None) -> dict[str, dict]:
    """What the reader must find at each path, as plain dicts."""
    root = root or d("")
    by_path = {s.path: s for s in specs}
    nlink: dict[str, int] = {}
    for s in specs:
        if s.link is not None:
            nlink[s.link] = nlink.get(s.link, 1) + 1
    out: dict[str, dict] = {}
    for s in [root, *specs]:
        base = by_path[s.link] if s.link is not None else s
        want = {"type": base.type.value, "mode": base.mode, "uid": base.uid, "gid": base.gid,
                "mtime_ns": base.mtime_ns, "xattrs": dict(base.xattrs)}
        if base.type is FileType.REGULAR:
            want.update(size=len(base.data), sha256=hashlib.sha256(base.data).hexdigest(),
                        nlink=nlink.get(base.path, 1))
        elif base.type is FileType.SYMLINK:
            want.update(target=base.target, nlink=1)
        elif base.type in (FileType.CHAR, FileType.BLOCK):
            want.update(rdev=base.rdev, size=0, nlink=1)
        elif base.type is FileType.FIFO:
            want.update(size=0, nlink=1)
        out[s.path] = want
    return out


def actual_nodes(image: Path) -> dict[str, dict]:
    """What the reader finds at each path (mke2fs's own lost+found included)."""
    with Ext4Image(image) as fs:
        return {path: _view(n) for path, n in fs.walk().items()}


def _view(n: Node) -> dict:
    view = {"type": n.type, "mode": n.mode, "uid": n.uid, "gid": n.gid,
            "mtime_ns": n.mtime_ns, "xattrs": n.xattrs}
    if n.type == "f":
        view.update(size=n.size, sha256=n.sha256, nlink=n.nlink)
    elif n.type == "l":
        view.update(target=n.target, nlink=n.nlink)
    elif n.type in "cb":
        view.update(rdev=n.rdev, size=n.size, nlink=n.nlink)
    elif n.type == "p":
        view.update(size=n.size, nlink=n.nlink)
    return view


def assert_image_matches(image: Path, specs: Sequence[Spec], root: Spec | None = None) -> None:
    expected = expected_nodes(specs, root)
    actual = actual_nodes(image)
    if "lost+found" not in expected:
        assert actual.pop("lost+found")["mode"] == 0o700
    assert sorted(actual) == sorted(expected)
    for path in expected:
        assert actual[path] == expected[path], path
    with Ext4Image(image) as fs:
        nodes = fs.walk()
    for path, n in nodes.items():
        # Every timestamp of a tree inode is the entry's mtime; the directory
        # entry's file type byte agrees with the inode (1 f, 2 d, 3 c, 4 b, 5 p, 7 l).
        if path in expected:
            assert n.atime_ns == n.ctime_ns == n.crtime_ns == n.mtime_ns, path
        if path:
            assert n.dirent_type == {"f": 1, "d": 2, "c": 3, "b": 4, "p": 5, "l": 7}[n.type], path


def fsck_clean(image: Path) -> None:
    proc = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True,
                          env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if not ln.startswith("Pass ")]
    assert len(lines) == 1 and "files" in lines[0], proc.stdout


def build_flat(flat: Path, output: Path, options: Ext4Options, *, seed: str,
               builder: str = "mkfs") -> Ext4Result:
    """The image of the flat image ``flat`` by ``builder`` (native: from its layer store)."""
    if builder == "native":
        return build_native(flat, flat / STORE_NAME, output,
                            replace(options, builder="native"), seed=seed)
    return build_ext4(flat, output, replace(options, builder="mkfs"), seed=seed)


def build(tmp: Path, specs: Sequence[Spec], options: Ext4Options | None = None, *,
          root: Spec | None = None, name: str = "img", seed: str = "seed",
          builder: str = "mkfs") -> Ext4Result:
    """Build ``specs``; the native builder gets no staging tree (it must not need one)."""
    flat = make_flat(tmp / f"flat-{name}", specs, root=root, staging=builder == "mkfs")
    out = tmp / "out"
    out.mkdir(exist_ok=True)
    return build_flat(flat, out / f"{name}.ext4", options or Ext4Options(), seed=seed,
                      builder=builder)


def specs_from_members(tree: dict) -> list[Spec]:
    """Specs for a tests.harness expected tree ({path: Member}, hard links as kind "hardlink")."""
    out = []
    for path, m in sorted(tree.items()):
        common = dict(uid=m.uid, gid=m.gid, mtime_ns=m.mtime * 10**9, xattrs=dict(m.xattrs))
        if m.kind == "dir":
            out.append(d(path, m.mode, **common))
        elif m.kind == "file":
            out.append(f(path, m.data, m.mode, **common))
        elif m.kind == "hardlink":
            out.append(hl(path, m.target))
        elif m.kind == "symlink":
            out.append(Spec(path, FileType.SYMLINK, m.mode, target=m.target, **common))
        elif m.kind == "fifo":
            out.append(fifo(path, m.mode, **common))
        elif m.kind == "char":
            out.append(cdev(path, m.major, m.minor, m.mode, **common))
        elif m.kind == "block":
            out.append(bdev(path, m.major, m.minor, m.mode, **common))
        else:
            raise AssertionError(f"unexpected member kind {m.kind!r} at {path!r}")
    return out


# -- the images ---------------------------------------------------------------------

CAP = bytes.fromhex("0100000200200000000000000000000000000000")
"""security.capability v2: cap_net_raw permitted and effective."""
CAP_V3 = bytes.fromhex("0100000300200000000000000000000000000000e8030000")
"""security.capability v3 (namespaced to rootid 1000): 24 bytes."""


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A system.posix_acl_* value in the xattr form (version 2, 8-byte entries)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


UNDEF = 0xFFFFFFFF
ACCESS_ACL = acl((0x01, 7, UNDEF), (0x02, 4, 1000), (0x04, 5, UNDEF), (0x08, 4, 42),
                 (0x10, 5, UNDEF), (0x20, 4, UNDEF))
DEFAULT_ACL = acl((0x01, 7, UNDEF), (0x04, 5, UNDEF), (0x20, 0, UNDEF))

RICH: list[Spec] = [
    d("bin"), d("etc"), d("dev"), d("home"), d("tmp", 0o1777), d("var"),
    d("var/mail", 0o2775, gid=8),
    f("bin/su", b"\x7fELF su", 0o4755),
    f("bin/wall", b"\x7fELF wall", 0o2755, gid=5),
    f("bin/sticky-exec", b"odd but legal", 0o1755),
    f("bin/all-bits", b"s", 0o7777, uid=3, gid=4),
    f("bin/no-bits", b"", 0o000),
    f("bin/ping", b"\x7fELF ping", 0o755, xattrs={"security.capability": CAP}),
    f("bin/ns-cap", b"\x7fELF ns", 0o755, xattrs={"security.capability": CAP_V3}),
    f("bin/xattrs", b"x", xattrs={"user.quote": b'a"b\\x41"', "user.empty": b"",
                                  "user.binary": bytes(range(256)),
                                  "trusted.overlay.opaque": b"y",
                                  "security.selinux": b"system_u:object_r:bin_t:s0\0"}),
    f("etc/acl", b"acl", 0o754, xattrs={"system.posix_acl_access": ACCESS_ACL}),
    d("etc/acl-dir", 0o755, xattrs={"system.posix_acl_default": DEFAULT_ACL}),
    f("etc/big-xattr", b"", xattrs={"user.big": b"v" * 3000}),
    d("home/user", 0o700, uid=100000, gid=200000),
    f("home/user/owned", b"mine", 0o600, uid=100000, gid=200000),
    f("bin/a", os.urandom(10000)), hl("bin/b", "bin/a"), hl("b2-sorts-first", "bin/a"),
    hl("home/user/c", "bin/a"),
    f("etc/one-link", b"1"), hl("etc/two-link", "etc/one-link"),
    sym("sh", "bin/su"), sym("etc/long-link", "x" * 200), sym("etc/dangling", "/nowhere/at/all"),
    sym("etc/odd-target", os.fsdecode(b"t a\"r\\g\xffet\n")), sym("etc/59", "y" * 59),
    sym("etc/60", "y" * 60),
    fifo("run-fifo", 0o640, uid=1, gid=2),
    cdev("dev/null", 1, 3), cdev("dev/console", 5, 1, 0o600), cdev("dev/tty0", 4, 0, 0o620, gid=5),
    bdev("dev/nvme0n1p300", 259, 300, gid=6), cdev("dev/big-major", 511, 1048575, 0o640),
    bdev("dev/sda", 8, 0, gid=6), cdev("dev/odd name \"q\" \\", 10, 200),
    f("empty", b""), f("block-exact", b"b" * 4096),
    f("holes", bytes(8192) + b"data" + bytes(5000) + b"end" + bytes(4096)),
    f("all-zeros", bytes(3 * 4096)),
    f("new\nline", b"nl"), f("carriage\rreturn", b"cr"), f("tab\tname", b"tab"),
    f(os.fsdecode(b"not-utf8-\xff\xfe"), b"latin"), f("ünïcødé", b"u"),
    f("n" * 255, b"long name"), f("sp ace 'single' \"double\" back\\slash", b"odd"),
    f("-dash", b"-"), f("<12>", b"ino"), f("#hash", b"#"),
    f("times/negative", b"", mtime_ns=-1_500_000_000_987_654_321),
    f("times/epoch", b"", mtime_ns=0),
    f("times/after-2038", b"", mtime_ns=(2**31 + 5) * 10**9 + 1),
    f("times/year-2200", b"", mtime_ns=7_258_118_400 * 10**9 + 999_999_999),
    d("times"),
    *[d("/".join(["deep"] * i)) for i in range(1, 12)],
    f("/".join(["deep"] * 11) + "/bottom", b"bottom"),
    d("wide"), *[f(f"wide/file-{i:04d}-{'p' * 40}", str(i).encode()) for i in range(300)],
]
RICH_ROOT = d("", 0o751, uid=1, gid=2, mtime_ns=1_600_000_000_000_000_007)


def _tree(files: int, size: int) -> list[Spec]:
    """A plain tree of ``files`` random files of ``size`` bytes each in 10 directories."""
    specs: list[Spec] = [d(f"d{i}") for i in range(10)]
    specs += [f(f"d{i % 10}/f{i}", os.urandom(size)) for i in range(files)]
    return specs


# -- tests --------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def prediction_must_hold(request: pytest.FixtureRequest,
                         monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """Every build in this module must map its inodes by prediction, checked in one
    debugfs run. The level-by-level listing may run only to explain a disagreement
    between staging tree and entries.jsonl (it then raises); a test that expects it
    to map inodes instead asks for ``listing_fallbacks``."""
    real = pipeline.ext4.fixup.list_inodes
    mapped: list[Path] = []

    def recording(image: Path, entries: Sequence[FlatEntry], flat_dir: Path,
                  scratch: Path) -> InodeMap:
        inodes = real(image, entries, flat_dir, scratch)
        mapped.append(flat_dir)
        return inodes

    monkeypatch.setattr(pipeline.ext4.fixup, "list_inodes", recording)
    yield mapped
    if "listing_fallbacks" not in request.fixturenames:
        assert mapped == [], "the inode prediction failed and the slow listing mapped inodes"


@pytest.fixture
def listing_fallbacks(prediction_must_hold: list[Path]) -> list[Path]:
    """The flat images whose inodes the slow listing had to map."""
    return prediction_must_hold



def test_every_entry_round_trips(tmp_path: Path, builder: str) -> None:
    result = build(tmp_path, RICH, root=RICH_ROOT, builder=builder)
    fsck_clean(result.path)
    assert_image_matches(result.path, RICH, RICH_ROOT)
    with Ext4Image(result.path) as fs:
        lost = fs.walk()["lost+found"]
        assert (lost.type, lost.mode, lost.uid, lost.gid) == ("d", 0o700, 0, 0)
        assert result.uuid == str(uuid.UUID(bytes=fs.uuid))
    assert result.size == result.path.stat().st_size
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    if builder == "mkfs":
        assert result.tool_versions == tool_versions()
        assert set(result.timings) == {"plan", "mkfs", "map", "fixup", "fsck", "hash", "total"}
    else:                                   # no e2fsprogs tool made these bytes
        assert result.tool_versions == {}
        assert set(result.timings) == {"read", "survey", "plan", "data", "directories",
                                       "metadata", "copy", "hash", "publish", "total"}
    # Sparse: the blocks on disk are a fraction of the apparent size.
    assert result.path.stat().st_blocks * 512 < result.size // 4


def debugfs_tree(image: Path, dest: Path) -> dict[str, tuple]:
    """The image as libext2fs sees it: ``rdump`` of / onto the host (as root it keeps owners
    and modes; it skips devices and fifos, which the reader compares), then each path's
    type, mode, owners, bytes or target."""
    dest.mkdir()
    proc = subprocess.run(["debugfs", "-R", f"rdump / {dest}", str(image)],
                          capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=True)
    assert b"rdump:" not in proc.stderr, proc.stderr
    seen: dict[str, tuple] = {}
    for top, dirs, files in os.walk(dest):
        for name in dirs + files:
            path = Path(top) / name
            st = os.lstat(path)
            if os.path.islink(path):
                kind: object = os.readlink(path)
            elif os.path.isfile(path):
                kind = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                kind = None
            seen[os.fsdecode(os.path.relpath(path, dest))] = (
                st.st_mode, st.st_uid, st.st_gid, kind)
    return seen


@pytest.mark.skipif(os.geteuid() != 0, reason="rdump keeps owners and makes devices as root")
def test_both_builders_store_the_same_tree(tmp_path: Path) -> None:
    """The cross-check: the native image and the mkfs image of one flat image read back
    the same through the independent reader and through debugfs."""
    native = build(tmp_path, RICH, root=RICH_ROOT, name="native", builder="native")
    mkfs = build(tmp_path, RICH, root=RICH_ROOT, name="mkfs", builder="mkfs")
    assert actual_nodes(native.path) == actual_nodes(mkfs.path)
    from_native = debugfs_tree(native.path, tmp_path / "dump-native")
    from_mkfs = debugfs_tree(mkfs.path, tmp_path / "dump-mkfs")
    special = (FileType.CHAR, FileType.BLOCK, FileType.FIFO)
    assert set(from_native) == {s.path for s in RICH if s.type not in special} | {"lost+found"}
    assert from_native == from_mkfs


def test_same_flat_image_same_bytes_and_seed_sets_the_ids(tmp_path: Path, builder: str) -> None:
    (tmp_path / "one").mkdir()
    first = build(tmp_path / "one", RICH, root=RICH_ROOT, builder=builder)
    time.sleep(1.1)                          # different wall-clock seconds, host times
    (tmp_path / "two").mkdir()
    second = build(tmp_path / "two", RICH, root=RICH_ROOT, builder=builder)
    assert first.sha256 == second.sha256
    assert first.path.read_bytes() == second.path.read_bytes()
    (tmp_path / "three").mkdir()
    other = build(tmp_path / "three", RICH, root=RICH_ROOT, seed="another seed",
                  builder=builder)
    assert other.sha256 != first.sha256
    fs_uuid, hash_seed = derive_uuids("another seed")
    with Ext4Image(other.path) as fs:
        assert str(uuid.UUID(bytes=fs.uuid)) == fs_uuid == other.uuid
        assert str(uuid.UUID(bytes=fs.hash_seed)) == hash_seed
        # Superblock times are pinned, not the clock's.
        assert set(fs.times.values()) <= {0, FS_EPOCH}


_AS_NOBODY = """
import json, sys
from pathlib import Path
from pipeline.ext4.build import Ext4Options
from tests.ext4.test_build import build_flat
result = build_flat(Path(sys.argv[1]), Path(sys.argv[2]), Ext4Options(), seed="seed",
                    builder=sys.argv[3])
print(json.dumps({"sha256": result.sha256, "size": result.size}))
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A temporary directory the unprivileged user (65534) can enter and write to."""
    path = Path(tempfile.mkdtemp(prefix="rootfs-ext4-nobody-"))
    os.chmod(path, 0o755)
    os.chown(path, NOBODY, NOBODY)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def build_as_nobody(flat: Path, output: Path, builder: str) -> dict:
    """Run ``builder`` in a child process as uid/gid 65534 with no groups."""
    proc = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", _AS_NOBODY, str(flat), str(output), builder],
        capture_output=True, text=True, cwd=output.parent, timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root")


@needs_root
def test_unprivileged_build_gives_the_same_bytes(shared_dir: Path, builder: str) -> None:
    flat = make_flat(shared_dir / "flat", RICH, root=RICH_ROOT, staging=builder == "mkfs")
    out = shared_dir / "out"
    out.mkdir()
    os.chown(out, NOBODY, NOBODY)
    rootless = build_as_nobody(flat, out / "nobody.ext4", builder)
    assert (out / "nobody.ext4").stat().st_uid == NOBODY
    as_root = build_flat(flat, shared_dir / "root.ext4", Ext4Options(), seed="seed",
                         builder=builder)
    assert rootless["sha256"] == as_root.sha256
    fsck_clean(out / "nobody.ext4")
    assert_image_matches(out / "nobody.ext4", RICH, RICH_ROOT)


@pytest.mark.parametrize(("headroom", "reserved"), [
    pytest.param(Headroom(percent=20, bytes=64 * MiB), 0.0, id="default"),
    pytest.param(Headroom(percent=150), 0.0, id="150-percent"),
    pytest.param(Headroom(bytes=200 * MiB), 0.0, id="200MiB"),
    pytest.param(Headroom(), 0.0, id="none"),
    pytest.param(Headroom(percent=20), 10.0, id="20-percent-with-10-percent-reserved"),
])
def test_auto_size_keeps_the_promised_free_space(tmp_path: Path, headroom: Headroom,
                                                 reserved: float, builder: str) -> None:
    specs = _tree(400, 50_000)                 # ~20 MB of incompressible data
    result = build(tmp_path, specs, Ext4Options(headroom=headroom, reserved_percent=reserved),
                   builder=builder)
    with Ext4Image(result.path) as fs:
        used = sum(-(-n.size // 4096) for n in fs.walk().values() if n.type == "f")
        free = (fs.free_blocks - fs.reserved_blocks) * 4096
        assert fs.reserved_blocks == int(fs.blocks_count * reserved / 100)
        assert free == result.free_bytes and fs.free_inodes == result.free_inodes
        assert fs.blocks_count * 4096 == result.size
    promised = headroom.for_used(used * 4096)
    assert free >= promised
    # ...and not much more: the estimate is close for incompressible files.
    assert free <= promised + 4 * MiB + promised // 50
    assert result.free_inodes >= len(specs) * headroom.percent / 100
    fsck_clean(result.path)
    assert_image_matches(result.path, specs)


def test_fixed_size(tmp_path: Path, builder: str) -> None:
    result = build(tmp_path, RICH, Ext4Options(size=96 * MiB), root=RICH_ROOT, builder=builder)
    assert result.size == result.path.stat().st_size == 96 * MiB
    with Ext4Image(result.path) as fs:
        assert fs.blocks_count == 96 * MiB // 4096
        assert fs.inodes_count >= 96 * MiB // 16384       # mke2fs's usual ratio
    fsck_clean(result.path)
    assert_image_matches(result.path, RICH, RICH_ROOT)


def test_fixed_size_too_small_fails_before_mkfs_and_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, builder: str) -> None:
    specs = _tree(100, 200_000)                # ~20 MB
    flat = make_flat(tmp_path / "flat", specs, staging=builder == "mkfs")
    out = tmp_path / "out"
    out.mkdir()
    (out / "img.ext4").write_bytes(b"stale output of an older build")
    import pipeline.ext4.build

    def no_mkfs(*args: object, **kwargs: object) -> None:
        raise AssertionError("mkfs.ext4 ran although the size was known to be too small")

    with monkeypatch.context() as m:
        m.setattr(pipeline.ext4.build, "_mkfs", no_mkfs)
        with pytest.raises(Ext4Error) as err:
            build_flat(flat, out / "img.ext4", Ext4Options(size=16 * MiB), seed="s",
                       builder=builder)
    message = str(err.value)
    prefix = "size 16 MiB (16777216 bytes) is too small for this image: it needs at least "
    assert message.startswith(prefix) and message.endswith('; raise `size` or use "auto"')
    assert list(out.iterdir()) == []
    needed = int(message[len(prefix):].split("(")[1].split()[0])
    result = build_flat(flat, out / "img.ext4", Ext4Options(size=needed), seed="s",
                        builder=builder)
    fsck_clean(result.path)
    assert_image_matches(result.path, specs)


def _flat_with(tmp: Path, change: str) -> Path:
    specs = [d("bin"), f("bin/a", b"aaaa"), f("bin/b", b"bb"), hl("bin/c", "bin/a"),
             cdev("dev-null", 1, 3)]
    flat = make_flat(tmp / "flat", specs)
    rootfs = flat / ROOTFS_NAME
    entries = (flat / ENTRIES_NAME).read_text().splitlines(keepends=True)
    if change == "staged-file-missing":
        (rootfs / "bin/b").unlink()
    elif change == "undeclared-staged-file":
        (rootfs / "bin/zzz").write_bytes(b"")
    elif change == "directory-staged-as-file":
        (rootfs / "bin/b").unlink()
        (rootfs / "bin/b").mkdir()
    elif change == "size-differs":
        (rootfs / "bin/b").write_bytes(b"bbb")
    elif change == "device-placeholder-not-empty":
        (rootfs / "dev-null").write_bytes(b"x")
    elif change == "hard-link-staged-apart":
        (rootfs / "bin/c").unlink()
        (rootfs / "bin/c").write_bytes(b"aaaa")
    elif change == "copies-staged-as-hard-link":
        (rootfs / "bin/b").unlink()
        os.link(rootfs / "bin/a", rootfs / "bin/b")
        entries = [line.replace('"s":2', '"s":4') for line in entries]
    elif change == "no-root-entry":
        entries = entries[1:]
    elif change == "duplicate-entry":
        entries.append(entries[-1])
    elif change == "entry-before-parent":
        entries = [entries[0], entries[2], entries[1], *entries[3:]]
    elif change == "parent-is-a-file":
        entries.append(entries[-1].replace('"p":"dev-null"', '"p":"dev-null/x"'))
    elif change == "entries-not-json":
        entries.append("{not json\n")
    elif change == "header-missing":
        (flat / HEADER_NAME).unlink()
    else:
        raise AssertionError(change)
    (flat / ENTRIES_NAME).write_text("".join(entries))
    return flat


DISAGREE = "flat image {flat}: the staging tree and entries.jsonl disagree: "
REBUILD = "; delete this flat image so that flatten rebuilds it"


@pytest.mark.parametrize(("change", "message"), [
    pytest.param("staged-file-missing", DISAGREE + "directory 'bin' has undeclared names [] "
                 "and lacks [b'b']" + REBUILD, id="staged-file-missing"),
    pytest.param("undeclared-staged-file", DISAGREE + "directory 'bin' has undeclared names "
                 "[b'zzz'] and lacks []" + REBUILD, id="undeclared-staged-file"),
    pytest.param("directory-staged-as-file", DISAGREE + "'bin/b' is declared regular but "
                 "staged with mode 40755" + REBUILD, id="directory-staged-as-file"),
    pytest.param("size-differs", DISAGREE + "'bin/b' is declared 2 bytes but staged with 3"
                 + REBUILD, id="size-differs"),
    pytest.param("device-placeholder-not-empty", DISAGREE + "'dev-null' is declared 0 bytes "
                 "but staged with 1" + REBUILD, id="device-placeholder-not-empty"),
    pytest.param("hard-link-staged-apart", DISAGREE + "'bin/c' is declared a hard link of "
                 "group 1 but staged apart" + REBUILD, id="hard-link-staged-apart"),
    pytest.param("copies-staged-as-hard-link", DISAGREE + "'bin/b' and 'bin/a' share a staged "
                 "inode but are not declared hard links" + REBUILD,
                 id="copies-staged-as-hard-link"),
    pytest.param("no-root-entry", "flat image {flat}: entries.jsonl must start with the root "
                 "directory (path \"\"); delete this flat image so flatten rebuilds it",
                 id="no-root-entry"),
    pytest.param("duplicate-entry", "flat image {flat}: path 'dev-null' appears twice in "
                 "entries.jsonl; delete this flat image so flatten rebuilds it",
                 id="duplicate-entry"),
    pytest.param("entry-before-parent", "flat image {flat}: entry 'bin/a' has no parent "
                 "directory before it; delete this flat image so flatten rebuilds it",
                 id="entry-before-parent"),
    pytest.param("parent-is-a-file", "flat image {flat}: entry 'dev-null/x' has no parent "
                 "directory before it; delete this flat image so flatten rebuilds it",
                 id="parent-is-a-file"),
    pytest.param("entries-not-json", "flat image {flat} cannot be read (line 7: Expecting "
                 "property name enclosed in double quotes (column 2)); delete this flat "
                 "image so flatten rebuilds it", id="entries-not-json"),
    pytest.param("header-missing", "flat image {flat} cannot be read ([Errno 2] No such file "
                 "or directory: '{flat}/flat.v3.json'); delete this flat image so flatten "
                 "rebuilds it", id="header-missing"),
])
def test_inconsistent_flat_image_fails_and_leaves_nothing(tmp_path: Path, change: str,
                                                          message: str, builder: str) -> None:
    if builder == "native" and message.startswith(DISAGREE):
        pytest.skip("the native builder reads no staging tree")
    flat = _flat_with(tmp_path, change)
    out = tmp_path / "out"
    out.mkdir()
    (out / "img.ext4").write_bytes(b"stale")
    with pytest.raises(Ext4Error) as err:
        build_flat(flat, out / "img.ext4", Ext4Options(), seed="s", builder=builder)
    assert str(err.value) == message.format(flat=flat)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("spec", "message"), [
    pytest.param(cdev("bad\nname", 1, 3), "device node name 'bad\\nname' contains a NUL, "
                 "carriage return or newline, which debugfs cannot address by name; rename it "
                 "in the image", id="device-name-with-newline"),
    pytest.param(cdev("huge", 4096, 0), "'huge': device number 4096:0 does not fit Linux's "
                 "12-bit major, 20-bit minor encoding", id="device-major-too-big"),
    pytest.param(Spec("norev", FileType.BLOCK, 0o600), "'norev': a block device entry has no "
                 "device numbers; the flat image is corrupt, delete it", id="device-without-rdev"),
    pytest.param(f("x", xattrs={"system.data": b""}), "'x': extended attribute 'system.data' "
                 "cannot be stored in ext4 (expected a user., trusted., security. or "
                 "system.posix_acl_* name); drop it from the image", id="xattr-system-data"),
    pytest.param(f("x", xattrs={"user.": b"v"}), "'x': extended attribute 'user.' cannot be "
                 "stored in ext4 (expected a user., trusted., security. or system.posix_acl_* "
                 "name); drop it from the image", id="xattr-empty-suffix"),
    pytest.param(f("x", xattrs={"user.a": b"v" * 3000, "user.b": b"v" * 2000}),
                 "'x': its extended attributes need 5040 bytes, more than the 4148 an ext4 "
                 "inode and one 4 KiB block hold; drop some in the image",
                 id="xattrs-too-big"),
])
def test_refused_entries(tmp_path: Path, spec: Spec, message: str) -> None:
    out = tmp_path / "out"
    with pytest.raises(Ext4Error) as err:
        build(tmp_path, [spec])
    assert str(err.value) == message
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(("inode_size", "mtime_ns", "expected"), [
    pytest.param(256, -(2**31) * 10**9 - 1, -(2**31) * 10**9, id="before-1901-clamped"),
    pytest.param(256, 3 * 2**32 * 10**9, (3 * 2**32 - 2**31 - 1) * 10**9,
                 id="after-2310-clamped"),
    pytest.param(256, 2**33 * 10**9 + 5, 2**33 * 10**9 + 5, id="year-2242-kept"),
    pytest.param(128, 1_700_000_000_999_999_999, 1_700_000_000 * 10**9,
                 id="small-inode-drops-nanoseconds"),
    pytest.param(128, -1_500_000_000 * 10**9, -1_500_000_000 * 10**9, id="small-inode-1922"),
    pytest.param(128, 2**31 * 10**9, (2**31 - 1) * 10**9, id="small-inode-2038-clamped"),
])
def test_timestamps_out_of_range_are_clamped(tmp_path: Path, inode_size: int, mtime_ns: int,
                                             expected: int, builder: str) -> None:
    result = build(tmp_path, [f("t", b"t", mtime_ns=mtime_ns)],
                   Ext4Options(inode_size=inode_size), builder=builder)
    with Ext4Image(result.path) as fs:
        node = fs.walk()["t"]
    assert node.mtime_ns == node.atime_ns == node.ctime_ns == expected
    assert node.crtime_ns == (expected if inode_size > 128 else None)
    fsck_clean(result.path)


def test_options_reach_the_superblock(tmp_path: Path, builder: str) -> None:
    options = Ext4Options(label="root-fs ✓", inode_size=512, journal=False,
                          reserved_percent=5, features=("^metadata_csum", "large_dir",
                                                        "^resize_inode"))
    result = build(tmp_path, RICH, options, root=RICH_ROOT, builder=builder)
    with Ext4Image(result.path) as fs:
        assert fs.label == "root-fs ✓".encode()
        assert fs.inode_size == 512
        assert not fs.compat & 0x4                       # has_journal
        assert not fs.compat & 0x10                      # resize_inode
        assert not fs.ro_compat & 0x400                  # metadata_csum
        assert fs.incompat & 0x4000                      # large_dir
        assert fs.reserved_blocks == fs.blocks_count * 5 // 100
    fsck_clean(result.path)
    assert_image_matches(result.path, RICH, RICH_ROOT)


@pytest.mark.parametrize("feature", sorted(TOGGLABLE_FEATURES | {
    "^" + f for f in TOGGLABLE_FEATURES & DEFAULT_FEATURES}))
def test_every_togglable_feature_builds_a_clean_exact_image(tmp_path: Path, feature: str,
                                                           builder: str) -> None:
    result = build(tmp_path, RICH, Ext4Options(features=(feature,)), root=RICH_ROOT,
                   builder=builder)
    fsck_clean(result.path)
    assert_image_matches(result.path, RICH, RICH_ROOT)


def test_host_xattrs_do_not_leak_into_the_image(tmp_path: Path) -> None:
    specs = [d("dir"), f("dir/file", b"x", xattrs={"user.declared": b"yes"})]
    flat = make_flat(tmp_path / "flat", specs)
    for path in (flat / ROOTFS_NAME, flat / ROOTFS_NAME / "dir", flat / ROOTFS_NAME / "dir/file"):
        os.setxattr(path, "user.host-only", b"leak")
    os.setxattr(flat / ROOTFS_NAME / "dir/file", "user.declared", b"host value")
    result = build_ext4(flat, tmp_path / "img.ext4", Ext4Options(), seed="s")
    assert_image_matches(result.path, specs)


def test_declared_lost_found_is_kept_as_declared(tmp_path: Path, builder: str) -> None:
    specs = [d("lost+found", 0o755, uid=7), f("lost+found/inside", b"found")]
    result = build(tmp_path, specs, builder=builder)
    fsck_clean(result.path)
    assert_image_matches(result.path, specs)
    with Ext4Image(result.path) as fs:
        assert fs.walk()["lost+found"].ino == 11


@pytest.mark.parametrize("builder", [pytest.param("native", marks=pytest.mark.slow), "mkfs"])
def test_debian_like_tree(tmp_path: Path, builder: str) -> None:
    """The largest image here: ~3000 entries, ~110 MB, devices, capabilities, hard links."""
    specs = specs_from_members(debian_like(files=3000, size=128 * MiB).expected())
    result = build(tmp_path, specs, builder=builder)
    fsck_clean(result.path)
    assert_image_matches(result.path, specs)


# -- options ------------------------------------------------------------------------


def test_options_dict_is_stable_and_complete() -> None:
    assert Ext4Options().to_dict() == {
        "size": "auto", "headroom": {"percent": 20.0, "bytes": 64 * MiB}, "label": "",
        "inode_size": 256, "journal": True, "features": [], "reserved_percent": 0.0,
        "block_size": 4096, "builder": "native"}
    assert Ext4Options(builder="mkfs").to_dict() == {**Ext4Options().to_dict(),
                                                     "builder": "mkfs"}
    same = Ext4Options(size="1GiB", headroom="20%", features=["large_dir", "metadata_csum",
                                                              " ^64bit"])
    assert same.to_dict() == Ext4Options(size=1 << 30, headroom=Headroom(percent=20),
                                         features=("^64bit", "large_dir")).to_dict()
    assert same.to_dict()["features"] == ["^64bit", "large_dir"]
    assert json.loads(json.dumps(same.to_dict())) == same.to_dict()


@pytest.mark.parametrize(("kwargs", "message"), [
    pytest.param({"size": "1GiB+1"}, "invalid size '1GiB+1'", id="size-syntax"),
    pytest.param({"size": 4097}, "invalid size 4097: it must be a multiple of 4 KiB",
                 id="size-not-blocks"),
    pytest.param({"label": "x" * 17}, "invalid label 'xxxxxxxxxxxxxxxxx': expected at most 16 "
                 "bytes without control characters", id="label-too-long"),
    pytest.param({"label": "a\nb"}, "invalid label 'a\\nb'", id="label-control"),
    pytest.param({"inode_size": 200}, "invalid inode size 200: expected one of 128, 256, 512, "
                 "1024", id="inode-size"),
    pytest.param({"features": ("inline_data",)}, "unsupported ext4 feature 'inline_data': "
                 "expected one of 64bit, dir_index, dir_nlink, extra_isize, flex_bg, huge_file, "
                 "large_dir, metadata_csum, metadata_csum_seed, resize_inode, optionally with "
                 "'^'", id="feature-unsupported"),
    pytest.param({"features": ("^has_journal",)}, "feature 'has_journal' is set with the "
                 "`journal` option, not in `features`", id="feature-journal"),
    pytest.param({"features": ("large_dir", "^large_dir")}, "feature 'large_dir' is both "
                 "turned on and off in `features`", id="feature-conflict"),
    pytest.param({"features": "large_dir"}, "invalid features 'large_dir': expected a list "
                 "of names", id="features-string"),
    pytest.param({"reserved_percent": 51}, "invalid reserved_percent 51: expected a number "
                 "from 0 to 50", id="reserved-too-big"),
    pytest.param({"reserved_percent": float("nan")}, "invalid reserved_percent nan",
                 id="reserved-nan"),
    pytest.param({"journal": "yes"}, "invalid journal 'yes': expected true or false",
                 id="journal-string"),
    pytest.param({"headroom": "lots"}, "invalid headroom 'lots'", id="headroom"),
    pytest.param({"builder": "mke2fs"}, "invalid builder 'mke2fs': expected \"native\" or "
                 "\"mkfs\"", id="builder"),
])
def test_options_refuse_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(Ext4Error) as err:
        Ext4Options(**kwargs)
    assert str(err.value).startswith(message)


def test_tool_versions() -> None:
    versions = tool_versions()
    assert set(versions) == {"mkfs.ext4", "debugfs", "e2fsck"}
    for version in versions.values():
        assert version[0].isdigit() and "(" in version


# -- size planning against mke2fs itself ------------------------------------------------


@pytest.mark.parametrize("inode_size", INODE_SIZES)
def test_auto_size_holds_the_promised_inodes_whatever_the_inode_size(inode_size: int) -> None:
    # mke2fs rounds inodes per group down to a multiple of 8 after filling whole
    # inode-table blocks: with 1024-byte inodes (4 per block) that can lose 4 a group.
    for tree_inodes in (1, 7, 100, 3001, 4093, 5000, 33000, 70001):
        usage = TreeUsage(blocks=1000, inodes=FIRST_INO + tree_inodes - 1,
                          tree_inodes=tree_inodes)
        plan = plan_size(usage, size=None, headroom=Headroom(percent=20, bytes=64 * MiB),
                         inode_size=inode_size, journal=True, reserved_percent=0,
                         desc_size=64, resize_inode=True, sparse_super=True)
        assert plan.layout.inodes - usage.inodes >= plan.promised_free_inodes, tree_inodes


@pytest.mark.parametrize(("blocks", "inodes", "features"), [
    pytest.param(16384, 4096, (), id="64MiB"),
    pytest.param(65536, 20000, (), id="256MiB"),
    pytest.param(300000, 70000, (), id="1.1GiB-odd"),
    pytest.param(1048576, 100000, (), id="4GiB"),
    pytest.param(40000, 10000, ("^resize_inode",), id="no-resize-inode"),
    pytest.param(100000, 10000, ("^64bit",), id="32-bit-descriptors"),
    pytest.param(5000, 100, (), id="tiny"),
    pytest.param(3 * 32768 + 100, 1000, (), id="short-last-group-dropped"),
    pytest.param(2 * 32768 + 100, 1000, (), id="short-last-group-kept"),
])
def test_layout_matches_mke2fs(tmp_path: Path, blocks: int, inodes: int,
                               features: tuple[str, ...]) -> None:
    lay = layout(blocks, inodes, inode_size=256, journal=True,
                 desc_size=32 if "^64bit" in features else 64,
                 resize_inode="^resize_inode" not in features, sparse_super=True)
    conf = tmp_path / "mke2fs.conf"
    conf.write_text(_MKE2FS_CONF)
    (tmp_path / "empty").mkdir()
    image = tmp_path / "img"
    image.write_bytes(b"")
    os.truncate(image, blocks * 4096)
    subprocess.run(["mkfs.ext4", "-F", "-q", "-T", "rootfs", "-b", "4096", "-N", str(inodes),
                    "-m", "0", *(["-O", ",".join(features)] if features else []),
                    "-J", f"size={lay.journal_blocks // 256}", "-E", "nodiscard",
                    "-d", str(tmp_path / "empty"), str(image), str(blocks)],
                   check=True, capture_output=True, env={**os.environ, "MKE2FS_CONFIG": str(conf)})
    with Ext4Image(image) as fs:
        assert (fs.blocks_count, fs.inodes_count) == (lay.blocks, lay.inodes)
        used = fs.blocks_count - fs.free_blocks
    # An empty tree is the root's block and lost+found's four; the model may
    # count one journal index block mke2fs does not need.
    assert lay.overhead + 5 - 1 <= used <= lay.overhead + 5


# -- the inode map: predicted, then checked in one debugfs run -----------------------------

# C-locale alphasort is byte order: uppercase before lowercase, "\ufffd" (ef bf bd)
# before the undecodable byte f0, which Python's str order puts the other way round;
# directories interleave with files, so the depth-first order matters too.
ODD_ORDER: list[Spec] = [
    d("m"), f("m/inner", b"i"), d("m/deep"), f("m/deep/x", b"x"), f("n", b"n"),
    f("\ufffd", b"replacement char"), f(os.fsdecode(b"\xf0x"), b"undecodable"),
    f("B", b"upper"), f("a", b"lower"), f("_", b"_"), f("a.b", b"."), f("a b", b" "),
    f("\u00e9", b"e-acute"), hl("z-link", "m/deep/x"), hl("A-link", "m/deep/x"),
    sym("m/link", "../n"), fifo("m/fifo"),
]


def test_prediction_follows_byte_order_depth_first(tmp_path: Path) -> None:
    flat = make_flat(tmp_path / "flat", ODD_ORDER)
    inodes = predict_inodes(list(read_entries(flat / ENTRIES_NAME)))
    # The first name of the hard-link group met in the walk takes the inode.
    assert inodes == {
        "": 2, "A-link": 12, "B": 13, "_": 14, "a": 15, "a b": 16, "a.b": 17, "m": 18,
        "m/deep": 19, "m/deep/x": 12, "m/fifo": 20, "m/inner": 21, "m/link": 22, "n": 23,
        "z-link": 12, "\u00e9": 24, "\ufffd": 25, os.fsdecode(b"\xf0x"): 26}
    result = build_ext4(flat, tmp_path / "img.ext4", Ext4Options(), seed="s")
    assert_image_matches(result.path, ODD_ORDER)
    with Ext4Image(result.path) as fs:
        assert {p: n.ino for p, n in fs.walk().items() if p != "lost+found"} == inodes


def test_a_wrong_prediction_is_caught_and_the_listing_maps_instead(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, listing_fallbacks: list[Path]) -> None:
    # Predict in Python's str order, which differs from mkfs's byte order here.
    monkeypatch.setattr(pipeline.ext4.inodes, "_name_order", lambda item: os.fsdecode(item[0]))
    flat = make_flat(tmp_path / "flat", ODD_ORDER)
    with capture_logs() as logs:
        result = build_ext4(flat, tmp_path / "img.ext4", Ext4Options(), seed="s")
    assert listing_fallbacks == [flat]
    warning = next(e for e in logs if e["event"] == "ext4.inode_prediction_failed")
    assert warning["log_level"] == "warning" and warning["reason"].startswith("directory <")
    fsck_clean(result.path)
    assert_image_matches(result.path, ODD_ORDER)


# No device nodes: the fixup turns their placeholders into devices, so the final
# image lists exactly what mkfs -d staged.
MAPPED: list[Spec] = [
    d("bin"), d("etc"), d("etc/sub"), f("bin/a", b"aa"), f("bin/b", b"bbb"),
    hl("bin/c", "bin/a"), f("etc/x", b"x"), f("etc/sub/y", b"yy"), sym("etc/l", "x"),
    fifo("etc/p"), f("top", b"top"),
]


def _perturbed(inodes: InodeMap, change: str) -> InodeMap:
    wrong = dict(inodes)
    if change == "swap-siblings":
        wrong["bin/a"], wrong["bin/b"] = inodes["bin/b"], inodes["bin/a"]
        wrong["bin/c"] = wrong["bin/a"]
    elif change == "swap-across-directories":
        wrong["etc/x"], wrong["top"] = inodes["top"], inodes["etc/x"]
    elif change == "swap-directories":
        wrong["etc"], wrong["etc/sub"] = inodes["etc/sub"], inodes["etc"]
    elif change == "hard-link-split":
        wrong["bin/c"] = max(inodes.values()) + 1
    elif change == "files-merged":
        wrong["bin/b"] = inodes["bin/a"]
    elif change == "shifted-after-a-directory":
        wrong = {p: n + 1 if n > inodes["etc"] else n for p, n in inodes.items()}
    elif change == "file-on-lost+found":
        wrong["top"] = 11
    elif change == "directory-on-a-file":
        wrong["etc/sub"] = inodes["etc/x"]
    else:
        raise AssertionError(change)
    assert wrong != inodes
    return wrong


@pytest.mark.parametrize("change", [
    "swap-siblings", "swap-across-directories", "swap-directories", "hard-link-split",
    "files-merged", "shifted-after-a-directory", "file-on-lost+found", "directory-on-a-file"])
def test_listing_check_catches_every_wrong_map(tmp_path: Path, change: str) -> None:
    result = build(tmp_path, MAPPED)
    entries = list(read_entries(tmp_path / "flat-img" / ENTRIES_NAME))
    right = predict_inodes(entries)

    def check(inodes: InodeMap) -> str | None:
        expected = expected_listings(entries, inodes)
        listing = DirectoryListing(result.path, sorted(expected), tmp_path)
        return listing_error(listing.result(), expected)

    assert check(right) is None
    assert check(_perturbed(right, change)) is not None


def test_listing_check_compares_file_sizes_not_directory_sizes(tmp_path: Path) -> None:
    result = build(tmp_path, MAPPED)
    entries = list(read_entries(tmp_path / "flat-img" / ENTRIES_NAME))
    expected = expected_listings(entries, predict_inodes(entries))
    listings = DirectoryListing(result.path, sorted(expected), tmp_path).result()
    assert listings is not None and listing_error(listings, expected) is None

    def resized(kind: bytes, size: bytes) -> dict[int, list]:
        return {n: [(*r[:5], size) if r[1][:2] == kind else r for r in records]
                for n, records in listings.items()}

    assert listing_error(resized(b"04", b"4096"), expected) is None
    assert listing_error(resized(b"10", b"7"), expected) is not None


@pytest.mark.parametrize("inode_size", [128, 256, 1024])
def test_inodes_read_back_agree_with_the_independent_reader(tmp_path: Path,
                                                            inode_size: int) -> None:
    result = build(tmp_path, RICH, Ext4Options(inode_size=inode_size), root=RICH_ROOT)
    large = inode_size > 128
    with Ext4Image(result.path) as fs:
        nodes = {n.ino: n for n in fs.walk().values()}
    fields = read_inodes(result.path, nodes)
    assert fields.keys() == nodes.keys()
    for number, node in nodes.items():
        got = fields[number]
        assert stat_type(got.mode) == node.type and got.mode & 0o7777 == node.mode
        assert (got.uid, got.gid) == (node.uid, node.gid)
        assert set(got.xattrs) == set(node.xattrs), node.path
        stamps = [node.atime_ns, node.ctime_ns, node.mtime_ns]
        if large:
            assert node.crtime_ns is not None
            stamps.append(node.crtime_ns)
        for i, ns in enumerate(stamps):
            low, extra = time_fields(ns, large_inode=large)
            assert got.seconds[i] == low, (node.path, i)
            assert got.extras[i] == extra, (node.path, i)
    assert any(len(n.xattrs) > 1 for n in nodes.values())


def stat_type(mode: int) -> str:
    return {0o040000: "d", 0o100000: "f", 0o120000: "l", 0o010000: "p", 0o020000: "c",
            0o060000: "b"}[mode & 0o170000]


@pytest.mark.parametrize("value_size", [pytest.param(8, id="in-inode"),
                                        pytest.param(2000, id="in-a-block")])
def test_host_xattrs_mkfs_copied_are_removed(tmp_path: Path, value_size: int) -> None:
    specs = [d("dir"), f("dir/file", b"x", xattrs={"user.declared": b"yes"}), f("plain", b"p")]
    flat = make_flat(tmp_path / "flat", specs)
    for path in ("", "dir", "dir/file", "plain"):
        os.setxattr(flat / ROOTFS_NAME / path, "user.host-only", b"h" * value_size)
    result = build_ext4(flat, tmp_path / "img.ext4", Ext4Options(), seed="s")
    fsck_clean(result.path)
    assert_image_matches(result.path, specs)


# -- the image's sha256 ---------------------------------------------------------------------


@pytest.mark.parametrize("layout_", [
    pytest.param([], id="empty"),
    pytest.param([("hole", 5 << 20)], id="all-hole"),
    pytest.param([("data", 4096)], id="one-block"),
    pytest.param([("hole", 3 << 20), ("data", 5 << 20), ("hole", 1 << 20), ("data", 100),
                  ("hole", 7 << 20)], id="holes-around-data"),
    pytest.param([("data", (2 << 20) + 1)], id="data-past-a-chunk"),
])
def test_sparse_sha256_is_the_sha256_of_every_byte(tmp_path: Path,
                                                   layout_: list[tuple[str, int]]) -> None:
    path = tmp_path / "sparse"
    with open(path, "wb") as out:
        for kind, size in layout_:
            if kind == "hole":
                out.seek(size, os.SEEK_CUR)
            else:
                out.write(os.urandom(size))
        out.truncate()
    assert sha256_sparse(path) == hashlib.sha256(path.read_bytes()).hexdigest()


# The native writer lays out all 524,288 groups of 64 TiB before it asks for the file.
@pytest.mark.parametrize("builder", [pytest.param("native", marks=pytest.mark.slow), "mkfs"])
def test_size_beyond_the_host_filesystem_is_one_clear_error(tmp_path: Path,
                                                            builder: str) -> None:
    huge = 64 * 1024 * MiB * 1024  # 64 TiB: ext4 hosts stop at 16 TiB per file
    probe = tmp_path / "probe"
    with open(probe, "wb") as handle:
        try:
            os.ftruncate(handle.fileno(), huge)
        except OSError:
            pass
        else:
            pytest.skip("this temporary filesystem holds 64 TiB files (not ext4)")
    probe.unlink()
    flat = make_flat(tmp_path / "flat", [f("a", b"x")])
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(Ext4Error) as err:
        build_flat(flat, out / "img.ext4", Ext4Options(size=huge), seed="s", builder=builder)
    assert str(err.value) == (
        f"the filesystem holding {str(out)!r} cannot hold a 64 TiB (70368744177664 bytes) file"
        " (File too large); choose a smaller `size` or an output_dir on a filesystem that"
        " allows larger files")
    assert list(out.iterdir()) == []


def test_xattrs_at_the_limits_treelimits_allows_build_exactly(tmp_path: Path,
                                                              builder: str) -> None:
    """The longest name and the largest value ``ext4.treelimits`` lets through are stored
    whole: the limits are ext4's, not looser (a cut name would merge with another)."""
    from pipeline.ext4.treelimits import MAX_XATTR_NAME_BYTES, max_xattr_value_bytes

    long_a = "user." + "a" * (MAX_XATTR_NAME_BYTES - 1) + "1"
    long_b = "user." + "a" * (MAX_XATTR_NAME_BYTES - 1) + "2"
    biggest = b"v" * max_xattr_value_bytes(len("big"))
    specs = [d("etc"), f("etc/names", xattrs={long_a: b"1", long_b: b"2"}),
             f("etc/value", xattrs={"user.big": biggest})]
    result = build(tmp_path, specs, builder=builder)
    fsck_clean(result.path)
    assert_image_matches(result.path, specs)


def test_times_outside_ext4s_range_are_clamped_and_reported(tmp_path: Path,
                                                            builder: str) -> None:
    year_2500 = 16_725_225_600 * 10**9     # past 2446, the last year a 256-byte inode holds
    specs = [d("etc"), f("etc/future", b"x", mtime_ns=year_2500), f("etc/now", b"y")]
    result = build(tmp_path, specs, builder=builder)
    fsck_clean(result.path)
    assert result.clamped_times == ("etc/future",)
    with Ext4Image(result.path) as fs:
        nodes = fs.walk()
    assert nodes["etc/future"].mtime_ns == (3 * 2**32 - 2**31 - 1) * 10**9  # the last second
    assert nodes["etc/now"].mtime_ns == MTIME_NS


@pytest.fixture
def tiny_output_dir(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs: an output filesystem that fills up (needs root to mount)."""
    where = tmp_path / "tiny"
    where.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_a_full_output_filesystem_is_one_line_saying_so(tmp_path: Path, tiny_output_dir: Path,
                                                         builder: str) -> None:
    flat = make_flat(tmp_path / "flat", [d("data"), f("data/blob", os.urandom(6 << 20))])
    output = tiny_output_dir / "img.ext4"
    with pytest.raises(Ext4Error) as err:
        build_flat(flat, output, Ext4Options(), seed="seed", builder=builder)
    assert str(err.value).startswith(
        f"the output filesystem holding {str(tiny_output_dir)!r} is full: the image needs up to ")
    assert str(err.value).endswith("; free some space or set output_dir elsewhere")
    assert list(tiny_output_dir.iterdir()) == []   # nothing half-written left behind
    # The free figure is the tmpfs without our removed temporary, not "0 bytes".
    st = os.statvfs(tiny_output_dir)
    free = st.f_bavail * st.f_frsize
    assert free >= 1 << 20
    assert f" and {format_size(free)} is free there;" in str(err.value), str(err.value)
