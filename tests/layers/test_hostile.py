"""Hostile layers through the whole layer path, pulled from the real registry.

push -> resolve_image -> BlobCache.fetch -> unpack_layer -> flatten_image, with
a victim directory beside the build. Every case asserts the exact resulting
tree (read back from the flat image: entries.jsonl plus the staging files) or
the exact error, and that the victim, the host's /tmp and everything beside
the build are untouched. Cases follow issue 3's list, numbered as there.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pipeline.errors import (
    BadHardLink,
    CompressionMismatch,
    CorruptStream,
    CorruptTar,
    DigestMismatch,
    LayerError,
    LimitExceeded,
    PathOutsideRoot,
    PipelineError,
)
from pipeline.flat.image import HEADER_NAME, FileType, read_entries, read_header
from pipeline.flat.staging import flatten_image
from pipeline.layers.unpack import Limits, unpack_layer
from pipeline.oci.platform import parse_platform
from pipeline.oci.reference import parse_reference
from pipeline.registry.blobcache import BlobCache
from pipeline.registry.client import RegistryClient
from pipeline.registry.resolve import resolve_image
from tests.harness.images import (
    Layer,
    Member,
    blockdev,
    bomb,
    chardev,
    dir,
    fifo,
    file,
    hardlink,
    make_image,
    make_layer,
    opaque,
    symlink,
    whiteout,
)
from tests.harness.push import push
from tests.harness.registry import Registry

UP = "../../../../"
"""From the staging rootfs (build/flat/<key>/rootfs) or a store's files/ up to the
directory that holds both the build and the victim."""
CAP = bytes.fromhex("0100000200200000000000000000000000000000")
_tags = itertools.count()


@dataclass
class Case:
    layers: list[Layer]
    diff_ids: list[str] | None = None
    limits: Limits = field(default_factory=Limits)


@dataclass
class Host:
    """The build directory, the victim beside it, and the registry to pull from."""

    root: Path
    registry: Registry
    repo: str
    client: RegistryClient

    @property
    def build(self) -> Path:
        return self.root / "build"

    @property
    def victim(self) -> Path:
        return self.root / "victim"

    def pull(self, case: Case) -> Path:
        image = make_image(case.layers, diff_ids=case.diff_ids)
        tag = f"t{next(_tags)}"
        push(self.registry, self.repo, tag, image)
        ref = parse_reference(f"{self.registry.host}/{self.repo}:{tag}")
        blobs = BlobCache(self.build / "blobs")
        resolved = resolve_image(self.client, ref, parse_platform("linux/amd64"), blobs)
        stores = [unpack_layer(blobs.fetch(self.client, ref.registry, ref.repository,
                                           layer.digest, layer.size),
                               layer, self.build / "layers", limits=case.limits)
                  for layer in resolved.layers]
        return flatten_image(stores, self.build / "flat")


def snapshot(path: Path) -> dict[str, tuple[int, int, int, str]]:
    """Everything under ``path``: mode, size, mtime and content hash (or link target)."""
    out: dict[str, tuple[int, int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            data = (os.readlink(p) if p.is_symlink() else
                    hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
            out[str(p.relative_to(path))] = (st.st_mode, st.st_size, st.st_mtime_ns, data)
    return out


def host_tmp() -> dict[str, bool]:
    return {name: os.path.lexists(f"/tmp/{name}") for name in ("passwd", "evil", "x")}


@pytest.fixture
def host(tmp_path: Path, registry: Registry, repo: str, client: RegistryClient) -> Iterator[Host]:
    h = Host(tmp_path, registry, repo, client)
    (h.victim / "etc").mkdir(parents=True)
    (h.victim / "file").write_bytes(b"precious")
    (h.victim / "etc" / "passwd").write_bytes(b"root:x:0:0\n")
    before, tmp_before = snapshot(h.victim), host_tmp()
    yield h
    assert snapshot(h.victim) == before, "the victim beside the build changed"
    assert host_tmp() == tmp_before, "the host's /tmp changed"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "victim"]


def tree_of(flat: Path) -> dict[str, str]:
    """The flat image as {path: line}: metadata from entries.jsonl, bytes from rootfs.

    Also checks that staging names share a host inode exactly when they share a
    ``link_group`` (what mkfs.ext4 -d turns into ext4 hard links).
    """
    out: dict[str, str] = {}
    inodes: dict[int, set[object]] = {}
    groups: dict[object, set[int]] = {}
    for e in read_entries(flat / "entries.jsonl"):
        if e.path and e.type is FileType.REGULAR:
            key = e.link_group if e.link_group is not None else e.path
            ino = (flat / "rootfs" / e.path).lstat().st_ino
            inodes.setdefault(ino, set()).add(key)
            groups.setdefault(key, set()).add(ino)
        if not e.path:
            continue
        owner = f"{e.mode:04o} {e.uid}:{e.gid}"
        host = flat / "rootfs" / e.path
        if e.type is FileType.REGULAR:
            line = f"f {owner} {host.read_bytes().decode()!r}"
        elif e.type is FileType.SYMLINK:
            assert os.readlink(host) == e.target
            line = f"l {e.target}"
        elif e.type in (FileType.CHAR, FileType.BLOCK):
            assert e.rdev is not None
            line = f"{e.type.value} {e.rdev[0]},{e.rdev[1]} {owner}"
        else:
            line = f"{e.type.value} {owner}"
        line += "".join(f" {k}={v.hex()}" for k, v in e.xattrs)
        if e.link_group is not None:
            line += f" #{e.link_group}"
        out[e.path] = line
    assert all(len(keys) == 1 for keys in inodes.values()), inodes
    assert all(len(found) == 1 for found in groups.values()), groups
    return out


D = "d 0755 0:0"


def F(data: str, mode: str = "0644", owner: str = "0:0") -> str:  # noqa: N802
    return f"f {mode} {owner} {data!r}"


def layers(*members: list[Member], compression: str = "gzip") -> Case:
    return Case([make_layer(m, compression=compression) for m in members])


# (id, case builder given the Host, expected tree | (error class, message suffix))
Expected = dict[str, str] | tuple[type[PipelineError], str]
TABLE: list[tuple[str, Callable[[Host], Case], Callable[[Host], Expected]]] = [
    # 1. names
    ("1-dotdot", lambda h: layers([file("../evil", b"x")]),
     lambda h: (PathOutsideRoot, "entry '../evil': name '../evil' leaves the image root"
                                 " through '..'")),
    ("1-dotdot-to-victim", lambda h: layers([file(f"{UP}victim/file", b"x")]),
     lambda h: (PathOutsideRoot, f"entry '{UP}victim/file': name '{UP}victim/file' leaves the"
                                 " image root through '..'")),
    ("1-root-dotdot", lambda h: layers([file("/../evil", b"x")]),
     lambda h: (PathOutsideRoot, "entry '/../evil': name '/../evil' leaves the image root"
                                 " through '..'")),
    ("1-absolute-rerooted", lambda h: layers([file("/etc/x", b"x"), file(str(h.victim / "file"),
                                                                         b"mine")]),
     lambda h: {"etc": D, "etc/x": F("x"), **_chain(h.victim, {"file": F("mine")})}),
    ("1-dot-slash", lambda h: layers([file("./a", b"a")]), lambda h: {"a": F("a")}),
    ("1-double-slash-dot", lambda h: layers([file("a//b/./c", b"c")]),
     lambda h: {"a": D, "a/b": D, "a/b/c": F("c")}),
    # 2. writing through an earlier layer's symlink
    ("2-etc-to-tmp", lambda h: layers([symlink("etc", "/tmp")], [file("etc/passwd", b"pw")]),
     lambda h: {"etc": "l /tmp", "tmp": D, "tmp/passwd": F("pw")}),
    ("2-etc-climbing", lambda h: layers([symlink("etc", "../../../tmp")],
                                        [file("etc/passwd", b"pw")]),
     lambda h: {"etc": "l ../../../tmp", "tmp": D, "tmp/passwd": F("pw")}),
    ("2-etc-to-victim-absolute", lambda h: layers([symlink("etc", str(h.victim / "etc"))],
                                                  [file("etc/passwd", b"pw")]),
     lambda h: {"etc": f"l {h.victim / 'etc'}",
                **_chain(h.victim / "etc", {"passwd": F("pw")})}),
    ("2-etc-to-victim-relative", lambda h: layers([symlink("etc", f"{UP}victim")],
                                                  [file("etc/file", b"pw")]),
     lambda h: {"etc": f"l {UP}victim", "victim": D, "victim/file": F("pw")}),
    ("2-chain-of-links", lambda h: layers([symlink("a", "b"), symlink("b", f"/{UP}victim")],
                                          [dir("a/sub"), file("a/sub/x", b"x")]),
     lambda h: {"a": "l b", "b": f"l /{UP}victim", "victim": D, "victim/sub": D,
                "victim/sub/x": F("x")}),
    # 3. hard links
    ("3-to-victim", lambda h: layers([hardlink("h", "../victim/file")]),
     lambda h: (PathOutsideRoot, "entry 'h': hard-link target '../victim/file' leaves the"
                                 " image root through '..'")),
    ("3-to-victim-deep", lambda h: layers([hardlink("h", f"{UP}victim/file")]),
     lambda h: (PathOutsideRoot, f"entry 'h': hard-link target '{UP}victim/file' leaves the"
                                 " image root through '..'")),
    ("3-absolute-rerooted", lambda h: layers([file("etc/passwd", b"pw")],
                                             [hardlink("h", "/etc/passwd")]),
     lambda h: {"etc": D, "etc/passwd": F("pw") + " #1", "h": F("pw") + " #1"}),
    ("3-absolute-missing", lambda h: layers([file("x", b"x")], [hardlink("h", "/etc/passwd")]),
     lambda h: (BadHardLink, "entry 'h': hard link target 'etc/passwd' is not in the tree"
                             " (missing, removed by a whiteout, or only in a later entry)")),
    ("3-whited-out", lambda h: layers([file("a", b"a")], [whiteout("a")], [hardlink("h", "a")]),
     lambda h: (BadHardLink, "entry 'h': hard link target 'a' is not in the tree (missing,"
                             " removed by a whiteout, or only in a later entry)")),
    ("3-directory", lambda h: layers([dir("d")], [hardlink("h", "d")]),
     lambda h: (BadHardLink, "entry 'h': hard link target 'd' is a directory")),
    ("3-earlier-layer", lambda h: layers([file("usr/bin/perl", b"perl", mode=0o755)],
                                         [hardlink("usr/bin/perl5", "usr/bin/perl")]),
     lambda h: {"usr": D, "usr/bin": D, "usr/bin/perl": F("perl", "0755") + " #1",
                "usr/bin/perl5": F("perl", "0755") + " #1"}),
    ("3-through-symlink-to-victim", lambda h: layers([symlink("v", str(h.victim))],
                                                     [hardlink("h", "v/file")]),
     lambda h: (BadHardLink, "entry 'h': hard link target 'v/file' is not in the tree"
                             " (missing, removed by a whiteout, or only in a later entry)")),
    # 4. whiteouts
    ("4-whiteouts", lambda h: layers(
        [dir("dir"), file("dir/file", b"1"), file("dir/keep", b"2"), file("file", b"3"),
         dir("gone"), file("gone/x", b"4")],
        [whiteout("file"), whiteout("dir/file"), whiteout("gone")]),
     lambda h: {"dir": D, "dir/keep": F("2")}),
    ("4-opaque-keeps-own", lambda h: layers(
        [dir("dir"), file("dir/old", b"o"), dir("dir/sub"), file("dir/sub/old", b"s")],
        [file("dir/new1", b"n1"), opaque("dir"), file("dir/new2", b"n2")]),
     lambda h: {"dir": D, "dir/new1": F("n1"), "dir/new2": F("n2")}),
    ("4-opaque-root", lambda h: layers([file("a", b"a"), dir("d"), file("d/b", b"b")],
                                       [file("c", b"c"), opaque(""), file("e", b"e")]),
     lambda h: {"c": F("c"), "e": F("e")}),
    # 5. special files, modes, owners, capabilities
    ("5-specials", lambda h: layers([
        chardev("dev/null", 1, 3), blockdev("dev/loop0", 7, 0), fifo("run/initctl", mode=0o600),
        file("usr/bin/passwd", b"s", mode=0o4755), file("usr/bin/wall", b"g", mode=0o2755,
                                                        gid=5),
        dir("tmp", mode=0o1777), file("root-owned", b"", uid=0, gid=0),
        file("user", b"", uid=1000, gid=1000), file("subuid", b"", uid=100000, gid=100000),
        file("usr/bin/ping", b"p", mode=0o755, xattrs={"security.capability": CAP})]),
     lambda h: {"dev": D, "dev/loop0": "b 7,0 0660 0:0", "dev/null": "c 1,3 0666 0:0",
                "root-owned": F(""), "run": D, "run/initctl": "p 0600 0:0",
                "subuid": F("", owner="100000:100000"), "tmp": "d 1777 0:0",
                "user": F("", owner="1000:1000"), "usr": D, "usr/bin": D,
                "usr/bin/passwd": F("s", "4755"), "usr/bin/ping": F("p", "0755")
                + f" security.capability={CAP.hex()}", "usr/bin/wall": F("g", "2755", "0:5")}),
    # 6. broken blobs
    ("6-truncated-gzip", lambda h: Case([make_layer([file("a", b"x" * 5000)], truncate=-8)]),
     lambda h: (CorruptStream, ": gzip stream is truncated: the last member has no end; delete"
                               " the cached blob and fetch it again")),
    ("6-gzip-trailing-garbage", lambda h: Case([make_layer([file("a", b"x")],
                                                           trailing=b"garbage!")]),
     lambda h: (CorruptStream, ": 8+ bytes after the last gzip member are not gzip (they start"
                               " '6761726261676521')")),
    ("6-short-member", lambda h: layers([file("a", b"123", size=1000)]),
     lambda h: (CorruptTar, "entry 'a': tar stream ends inside this file's data (3 of 1000"
                            " bytes)")),
    ("6-diff-id-mismatch", lambda h: Case([make_layer([file("a", b"x")])],
                                          diff_ids=["sha256:" + "0" * 64]),
     lambda h: (DigestMismatch, " uncompressed (diff_id): expected sha256:" + "0" * 64)),
    ("6-gzip-bomb", lambda h: Case([bomb(64 << 20)], limits=Limits(max_stream_bytes=16 << 20)),
     lambda h: (LimitExceeded, ": uncompressed stream passes 16777216 bytes"
                               " (unpack.Limits.max_stream_bytes); a decompression bomb, or"
                               " raise the limit for this image")),
    ("6-zstd-bomb", lambda h: Case([bomb(64 << 20, compression="zstd")],
                                   limits=Limits(max_stream_bytes=16 << 20)),
     lambda h: (LimitExceeded, ": uncompressed stream passes 16777216 bytes"
                               " (unpack.Limits.max_stream_bytes); a decompression bomb, or"
                               " raise the limit for this image")),
    ("6-zstd-declared-gzip", lambda h: Case([make_layer([file("a", b"x")], compression="zstd",
                                                        declare="gzip")]),
     lambda h: (CompressionMismatch, ": media type"
                " 'application/vnd.oci.image.layer.v1.tar+gzip' promises gzip but the blob"
                " starts like zstd (first bytes '28b52ffd'); the registry or the image"
                " builder mislabelled this layer")),
]


def _chain(path: Path, leaves: dict[str, str]) -> dict[str, str]:
    """``path`` re-rooted inside the image: its directories, then ``leaves`` below it."""
    parts = path.relative_to("/").parts
    out = {"/".join(parts[:i + 1]): D for i in range(len(parts))}
    out.update({f"{'/'.join(parts)}/{k}": v for k, v in leaves.items()})
    return out


@pytest.mark.parametrize(("build", "expect"), [(b, e) for _, b, e in TABLE],
                         ids=[i for i, _, _ in TABLE])
def test_hostile(host: Host, build: Callable[[Host], Case],
                 expect: Callable[[Host], Expected]) -> None:
    case, expected = build(host), expect(host)
    if isinstance(expected, dict):
        assert tree_of(host.pull(case)) == expected
        return
    error, suffix = expected
    with pytest.raises(PipelineError) as err:
        host.pull(case)
    assert type(err.value) is error, err.value
    message = str(err.value)
    last = case.layers[-1].digest
    if isinstance(err.value, LayerError):
        assert message.startswith(f"layer {last}"), message
        assert message.endswith(suffix), message
    else:
        assert message.startswith(f"layer {last}{suffix}"), message
    layers_dir = host.build / "layers"
    assert not layers_dir.exists() or all(
        not p.name.startswith(".tmp-") for p in layers_dir.iterdir())
    assert not (host.build / "flat").exists()


def test_shared_base_layer_is_unpacked_once(host: Host) -> None:
    base = make_layer([dir("etc"), file("etc/os-release", b"ID=x\n")])
    one = host.pull(Case([base, make_layer([file("a", b"1")])]))
    two = host.pull(Case([base, make_layer([file("b", b"2")])]))
    assert one != two
    assert len(list((host.build / "layers").iterdir())) == 3
    assert read_header(one / HEADER_NAME).chain[0] == read_header(two / HEADER_NAME).chain[0] \
        == base.digest
    assert (one / "rootfs/etc/os-release").read_bytes() == b"ID=x\n"
