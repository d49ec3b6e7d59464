"""Derived ext4 builds (the mkfs builder's) end to end: real layers, real e2fsprogs, read
back independently.

Every derived image is checked three ways: entry by entry against the tree the
layers declare (``tests.harness.expected``, which shares no code with flatten),
entry by entry against the full build of the same flat image (inode numbers
aside, the two must agree on every field the reader sees, hard-link groups
included), and with ``e2fsck -fn``. Each test also asserts that the image
really was derived (``derived_from``), so a silent fallback to the full build
cannot make a test pass.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pipeline.base.units import MiB
from pipeline.ext4.build import Ext4Result, build_ext4
from pipeline.ext4.derive.build import (
    MIN_BASE_ENTRIES,
    DerivedBuild,
    FullBuild,
    LayerStats,
    build_image,
    choose_build,
    layer_stats,
)
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.tools import tool_versions
from pipeline.flat.image import chain_key
from pipeline.flat.staging import flatten_image
from pipeline.layers.store import LayerStore
from tests.ext4.test_build import (
    Spec,
    _view,
    actual_nodes,
    d,
    expected_nodes,
    fsck_clean,
    specs_from_members,
)
from tests.harness.debian import PING_CAPABILITY, debian_like
from tests.harness.expected import expected_tree
from tests.harness.ext4reader import Ext4Image
from tests.harness.images import (
    Member,
    blockdev,
    chardev,
    dir,
    fifo,
    file,
    hardlink,
    make_layer,
    opaque,
    symlink,
    whiteout,
    zeros,
)
from tests.layers.test_unpack import unpack

# End to end with real tools: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow

# ~1,500 entries and ~6 MB: above MIN_BASE_ENTRIES, so a top layer of up to
# 150 entries and 1.5 MB is derived.
BASE = (*debian_like(files=1500, size=6 << 20, seed=7).base,
        # Values too big for the inode: each lives in an external xattr block.
        file("etc/xattr-a", b"a", xattrs={"user.big": b"a" * 3000}),
        file("etc/xattr-b", b"b", xattrs={"user.big": b"b" * 3000}),
        file("etc/xattr-c", b"c", xattrs={"user.big": b"c" * 3000}))
BASE_BY_PATH = {m.path: m for m in BASE}


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _same(path: str, **changes: object) -> Member:
    """The base's member at ``path`` again (same bytes), with metadata ``changes``."""
    if isinstance(changes.get("xattrs"), dict):
        changes["xattrs"] = tuple(sorted(changes["xattrs"].items()))  # type: ignore[attr-defined]
    return replace(BASE_BY_PATH[path], **changes)  # type: ignore[arg-type]


# -- top layers, one concern each ---------------------------------------------------

TOPS: dict[str, list[list[Member]]] = {
    "whiteouts": [[
        whiteout("etc/motd"),                              # a file
        whiteout("usr/share/doc/pkg0001"),                 # a directory and its files
        whiteout("usr/bin/perl5.36.0"),                    # one name of a hard-linked pair
        whiteout("dev/zero"),                              # a device
        dir("var/cache/apt"), opaque("var/cache/apt"),     # an opaque directory, refilled
        file("var/cache/apt/fresh.bin", b"fresh"),
    ]],
    "opaque_empty": [[dir("usr/share/man/man1"), opaque("usr/share/man/man1")]],
    "replace_types": [[
        dir("etc/hostname", mode=0o750),                   # file -> directory
        file("etc/hostname/inner", b"inside"),
        file("usr/share/doc/pkg0002", b"was a directory"),  # directory -> file
        symlink("etc/debian_version", "/usr/lib/os-release"),  # file -> symlink
        file("usr/bin/awk", b"#!awk\n", mode=0o755),       # symlink -> file
        dir("etc/alternatives/vi"),                        # symlink -> directory
        file("etc/alternatives/vi/x", b"x"),
        symlink("usr/share/doc/pkg0003", "pkg0004"),       # directory -> symlink
        symlink("usr/lib/x86_64-linux-gnu/libz.so", "libz.so.1.2.13"),  # retarget
        fifo("dev/full"),                                  # device -> fifo
        file("run/initctl", b"not a fifo"),                # fifo -> file
        blockdev("dev/tty", 5, 0),                         # char -> block device
        file("usr/bin/mawk", b"new mawk", mode=0o755),     # new content, same name
    ]],
    "hard_links": [[
        hardlink("usr/local/bin/perl-again", "usr/bin/perl"),   # a third name, kept inode
        hardlink("etc/passwd-link", "etc/passwd"),               # a base file gains a link
        file("opt/new", b"linked three times", mode=0o640, uid=5),
        hardlink("opt/new-link", "opt/new"),
        hardlink("usr/local/new-elsewhere", "opt/new"),
    ]],
    "metadata_only": [[
        _same("usr/bin/passwd", mode=0o755),                     # setuid dropped
        _same("usr/bin/mawk", xattrs=(("security.capability", PING_CAPABILITY),)),
        _same("usr/bin/ping", xattrs=()),                        # capability dropped
        _same("home/user/.profile", uid=1001, gid=1002, mode=0o600),
        _same("etc/shadow", mtime=1_800_000_000),
        dir("home/user", mode=0o700, uid=1001, gid=1002),
        dir("tmp", mode=0o1777, mtime=1_650_000_000),
        chardev("dev/null", 1, 4, mode=0o600),                   # new device numbers
        dir("", mode=0o711),                                     # the root itself
    ]],
    "xattr_blocks": [[
        whiteout("etc/xattr-a"),                                 # its block is freed
        _same("etc/xattr-b", xattrs={"user.big": b"B" * 3000}),  # its block rewritten
        file("etc/xattr-c", b"new c", xattrs={"user.small": b"s"}),  # a new inode
        file("etc/xattr-d", b"d", xattrs={"user.big": b"d" * 3000}),
    ]],
    "hard_link_split": [[
        file("usr/bin/perl", b"a new perl", mode=0o755),   # perl5.36.0 keeps the old inode
        whiteout("etc/passwd"), file("etc/passwd", b"root::0:0::/:/bin/sh\n"),
    ]],
    "hard_link_gone": [[whiteout("usr/bin/perl"), whiteout("usr/bin/perl5.36.0")]],
    "growth": [[
        dir("opt"), file("opt/big.bin", _rand(700_000, 1)),
        dir("srv/data"),
        *[file(f"srv/data/f{i:03d}", _rand(2000 + i * 50, i)) for i in range(60)],
    ]],
    "new_nodes": [[
        dir("opt/app", mode=0o2750, gid=50),
        file("opt/app/cap", b"\x7fELF", mode=0o4711, xattrs={
            "security.capability": PING_CAPABILITY, "user.big": b"v" * 3000}),
        chardev("opt/app/tty9", 4, 9, mode=0o620, gid=5),
        blockdev("opt/app/nvme", 259, 300),
        chardev("opt/app/big-major", 511, 1048575),
        fifo("opt/app/pipe", mode=0o600),
        symlink("opt/app/fast", "cap"), symlink("opt/app/slow", "t" * 120),
        dir("opt/app/empty"),
        file("opt/app/name with \"quotes\" and spaces", b"q"),
        file("opt/app/<12>", b"looks like an inode reference"),
    ]],
    "two_top_layers": [
        [file("opt/one", b"1"), file("opt/two", b"2"), dir("opt/d"), file("opt/d/x", b"x")],
        [whiteout("opt/one"), whiteout("opt/d"), file("opt/two", b"22"), file("opt/three", b"3")],
    ],
}


# The test oracle reads a hard link as "the member at that path now": a file that
# replaces one name of a hard-linked pair is beyond it (the other name keeps the
# old inode). These are compared with the full build only.
ORACLE_CANNOT = {"hard_link_split"}


# -- building -----------------------------------------------------------------------


@dataclass
class Cache:
    """One cache directory: layer stores, flat images, base images, outputs."""

    root: Path

    def stores(self, layers: Sequence[Sequence[Member]]) -> list[LayerStore]:
        return [unpack(self.root, make_layer(members)) for members in layers]

    def build(self, layers: Sequence[Sequence[Member]], name: str = "img",
              options: Ext4Options | None = None, seed: str = "seed") -> Ext4Result:
        stores = self.stores(layers)
        chain = [s.digest for s in stores]
        flat = flatten_image(stores, self.root / "flat")
        return build_image(layers_root=self.root / "layers", flat_root=self.root / "flat",
                           base_root=self.root / "base", chain=chain, flat_dir=flat,
                           output=self.root / "out" / f"{name}.ext4",
                           options=options or mkfs_options(), seed=seed, tools=TOOLS)

    def full(self, layers: Sequence[Sequence[Member]], name: str = "full",
             options: Ext4Options | None = None, seed: str = "seed") -> Ext4Result:
        flat = flatten_image(self.stores(layers), self.root / "flat")
        return build_ext4(flat, self.root / "out" / f"{name}.ext4", options or mkfs_options(),
                          seed=seed)


TOOLS = tool_versions()


def mkfs_options(**kwargs: object) -> Ext4Options:
    """Derived builds are the mkfs builder's: the native one always builds in full."""
    return Ext4Options(builder="mkfs", **kwargs)  # type: ignore[arg-type]


def link_groups(image: Path) -> list[list[str]]:
    """The names of each inode that has more than one (non-directories only)."""
    with Ext4Image(image) as fs:
        by_ino: dict[int, list[str]] = {}
        for path, node in fs.walk().items():
            if node.type != "d":
                by_ino.setdefault(node.ino, []).append(path)
    return sorted(sorted(names) for names in by_ino.values() if len(names) > 1)


def assert_same_tree(derived: Path, full: Path) -> None:
    want, got = actual_nodes(full), actual_nodes(derived)
    assert sorted(got) == sorted(want)
    for path in want:
        assert got[path] == want[path], path
    assert link_groups(derived) == link_groups(full)


def assert_declared(image: Path, specs: Sequence[Spec], root: Spec) -> None:
    """``test_ext4.assert_image_matches``, with 128-byte inodes (no crtime) allowed."""
    expected = expected_nodes(specs, root)
    with Ext4Image(image) as fs:
        nodes = fs.walk()
    actual = {path: _view(node) for path, node in nodes.items()}
    if "lost+found" not in expected:
        assert actual.pop("lost+found")["mode"] == 0o700
    assert sorted(actual) == sorted(expected)
    for path in expected:
        assert actual[path] == expected[path], path
        node = nodes[path]
        assert node.atime_ns == node.ctime_ns == node.mtime_ns, path
        assert node.crtime_ns in (None, node.mtime_ns), path
        if path:
            assert node.dirent_type == {"f": 1, "d": 2, "c": 3, "b": 4, "p": 5,
                                        "l": 7}[node.type], path


def check_derived(cache: Cache, layers: list[list[Member]],
                  options: Ext4Options | None = None, *, declared: bool = True) -> Ext4Result:
    result = cache.build(layers, options=options)
    assert result.derived_from is not None, "the image was built in full, not derived"
    fsck_clean(result.path)
    assert result.sha256 == hashlib.sha256(result.path.read_bytes()).hexdigest()
    assert_same_tree(result.path, cache.full(layers, options=options).path)
    if not declared:
        return result
    tree = expected_tree(layers)
    root = tree.pop("", None)
    specs = specs_from_members(tree)
    # A root no layer declares is flatten's: root-owned, 0755, epoch mtime.
    root_spec = specs_from_members({"": root})[0] if root is not None else d("", mtime_ns=0)
    assert_declared(result.path, specs, root_spec)
    return result


# -- tests --------------------------------------------------------------------------


@pytest.mark.parametrize("top", sorted(TOPS))
def test_derived_image_is_the_flattened_tree(tmp_path: Path, top: str) -> None:
    check_derived(Cache(tmp_path), [list(BASE), *TOPS[top]],
                  declared=top not in ORACLE_CANNOT)


@pytest.mark.parametrize("options", [
    pytest.param(mkfs_options(inode_size=128), id="small-inodes"),
    pytest.param(mkfs_options(size=64 * MiB, reserved_percent=5.0), id="fixed-size"),
    pytest.param(mkfs_options(features=("^metadata_csum",), journal=False), id="no-csum"),
])
def test_derived_with_other_options(tmp_path: Path, options: Ext4Options) -> None:
    top = [*TOPS["whiteouts"][0], *TOPS["hard_links"][0], *TOPS["new_nodes"][0],
           *TOPS["xattr_blocks"][0], *TOPS["metadata_only"][0]]
    result = check_derived(Cache(tmp_path), [list(BASE), top], options)
    if options.size is not None:
        assert result.size == options.size


def test_growth_grows_the_filesystem(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    result = check_derived(cache, [list(BASE), *TOPS["growth"]])
    (base_dir,) = [p for p in (tmp_path / "base").iterdir() if not p.name.startswith(".")]
    assert result.size > (base_dir / "base.ext4").stat().st_size
    assert result.timings["resize"] > 0


def test_same_image_same_bytes_in_fresh_caches(tmp_path: Path) -> None:
    layers = [list(BASE), *TOPS["replace_types"]]
    one = Cache(tmp_path / "one").build(layers)
    two = Cache(tmp_path / "two").build(layers)
    assert one.derived_from is not None and one.derived_from == two.derived_from
    assert one.sha256 == two.sha256
    assert one.path.read_bytes() == two.path.read_bytes()


def test_bytes_do_not_depend_on_the_cached_base_or_the_batch(tmp_path: Path) -> None:
    """Image A alone in a fresh cache, and A built after B put the shared base in the
    cache (and after B was derived from it): the same bytes."""
    a = [list(BASE), *TOPS["hard_links"]]
    b = [list(BASE), *TOPS["whiteouts"]]
    alone = Cache(tmp_path / "alone").build(a, name="a")
    batch = Cache(tmp_path / "batch")
    first = batch.build(b, name="b")
    after = batch.build(a, name="a")
    again = batch.build(a, name="a-again")
    assert first.derived_from == after.derived_from == alone.derived_from is not None
    assert alone.sha256 == after.sha256 == again.sha256
    assert first.sha256 != after.sha256


def test_the_seed_sets_the_uuid(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    layers = [list(BASE), *TOPS["new_nodes"]]
    one = cache.build(layers, name="one", seed="one")
    two = cache.build(layers, name="two", seed="two")
    assert one.derived_from is not None and one.uuid != two.uuid
    assert one.sha256 != two.sha256
    with Ext4Image(two.path) as fs:
        assert str(uuid.UUID(bytes=fs.uuid)) == two.uuid


def test_the_base_is_built_once_per_key(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with capture_logs() as logs:
        for name in ("whiteouts", "hard_links", "new_nodes"):
            assert cache.build([list(BASE), *TOPS[name]], name=name).derived_from is not None
    assert [e["event"] for e in logs].count("ext4.base_built") == 1


# -- refusals: built in full, with the reason logged ---------------------------------


def test_a_shrinking_tree_is_built_in_full(tmp_path: Path) -> None:
    """Deleting most of the base's bytes (more than the default 64 MiB headroom gives
    back) makes the image smaller than its base, which resize2fs cannot derive."""
    cache = Cache(tmp_path)
    # The ballast is part of the base (two layers of base); the top deletes it.
    layers = [list(BASE), [dir("opt"), zeros("opt/ballast", 96 * MiB)], [whiteout("opt")]]
    stats = layer_stats(tmp_path / "layers", [s.digest for s in cache.stores(layers)])
    plan = choose_build(stats, mkfs_options(), TOOLS)
    assert isinstance(plan, DerivedBuild) and len(plan.base_chain) == 2
    with capture_logs() as logs:
        result = cache.build(layers)
    assert result.derived_from is None
    refused = [e for e in logs if e["event"] == "ext4.derive_refused"]
    assert len(refused) == 1 and "fewer than its base" in refused[0]["reason"]
    assert result.sha256 == cache.full(layers).sha256      # exactly the full build


def test_a_declared_lost_found_is_built_in_full(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    layers = [list(BASE), [dir("lost+found", mode=0o755)]]
    with capture_logs() as logs:
        result = cache.build(layers)
    assert result.derived_from is None
    assert any(e["event"] == "ext4.derive_refused" and "lost+found" in e["reason"]
               for e in logs)
    assert result.sha256 == cache.full(layers).sha256


def test_a_big_top_layer_is_built_in_full(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    layers = [list(BASE), [dir("opt"), file("opt/huge", _rand(3 << 20, 4))]]
    with capture_logs() as logs:
        result = cache.build(layers)
    assert result.derived_from is None
    assert not (tmp_path / "base").exists()                 # no base was even built
    assert not any(e["event"] == "ext4.derive_refused" for e in logs)


# -- the plan: pure ------------------------------------------------------------------

def _stats(*layers: tuple[int, int]) -> tuple[LayerStats, ...]:
    return tuple(LayerStats(f"sha256:{i:064x}", entries, size)
                 for i, (entries, size) in enumerate(layers))


@pytest.mark.parametrize(("layers", "base_layers"), [
    pytest.param([(5000, 100 << 20), (10, 1 << 20)], 1, id="small-top"),
    pytest.param([(5000, 100 << 20), (501, 1 << 20)], None, id="too-many-entries"),
    pytest.param([(5000, 100 << 20), (10, 26 << 20)], None, id="too-many-bytes"),
    pytest.param([(MIN_BASE_ENTRIES - 1, 100 << 20), (1, 1)], None, id="base-too-small"),
    pytest.param([(600, 50 << 20), (600, 50 << 20), (20, 1 << 20)], 2, id="two-base-layers"),
    pytest.param([(5000, 100 << 20), (100, 1 << 20), (100, 1 << 20)], 1, id="smallest-base"),
    pytest.param([(5000, 100 << 20)], None, id="one-layer"),
])
def test_plan_build(layers: list[tuple[int, int]], base_layers: int | None) -> None:
    stats = _stats(*layers)
    plan = choose_build(stats, mkfs_options(), TOOLS)
    if base_layers is None:
        assert plan == FullBuild()
    else:
        assert isinstance(plan, DerivedBuild)
        assert plan.base_chain == tuple(s.digest for s in stats[:base_layers])


def test_the_base_key_follows_chain_options_and_tools() -> None:
    stats = _stats((5000, 100 << 20), (10, 1 << 20))
    key = choose_build(stats, mkfs_options(), TOOLS)
    assert isinstance(key, DerivedBuild)
    # Size and headroom are the image's own: they share a base.
    assert choose_build(stats, mkfs_options(size=256 * MiB), TOOLS) == key
    assert choose_build(stats, mkfs_options(inode_size=512), TOOLS) != key
    # derive = false in the manifest: always in full, whatever the layers.
    assert choose_build(stats, mkfs_options(derive=False), TOOLS) == FullBuild()
    assert choose_build(stats, mkfs_options(), {**TOOLS, "resize2fs": "9.9"}) != key
    other = (stats[0], replace(stats[1], digest="sha256:" + "f" * 64, entries=20))
    assert choose_build(other, mkfs_options(), TOOLS) == key     # the top is not in the key
    assert chain_key(key.base_chain) != chain_key([s.digest for s in stats])


def test_the_native_builder_never_derives(tmp_path: Path) -> None:
    stats = _stats((5000, 100 << 20), (10, 1 << 20))
    assert isinstance(choose_build(stats, mkfs_options(), TOOLS), DerivedBuild)
    assert choose_build(stats, Ext4Options(builder="native"), TOOLS) == FullBuild()
    cache = Cache(tmp_path)
    layers = [list(BASE), [dir("opt"), file("opt/small", b"tiny")]]
    result = cache.build(layers, options=Ext4Options(builder="native"))
    assert result.derived_from is None and result.tool_versions == {}
    assert not (tmp_path / "base").exists()
    fsck_clean(result.path)
