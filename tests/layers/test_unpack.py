"""pipeline.layers.unpack and pipeline.layers.store: tar members to index records and a pack.

Layers are built in memory with the harness vocabulary (tests/harness/tarball.py);
raw ``tarfile.TarInfo`` members and spliced bytes cover what the vocabulary
will not write. Every case asserts the exact records or the exact error.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
import tarfile
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.base.digest import Digest, digest_of, parse_digest
from pipeline.base.jsonlines import decode_lines
from pipeline.errors import (
    BadDigest,
    BadName,
    CorruptTar,
    DigestMismatch,
    LayerError,
    LimitExceeded,
    MalformedWhiteout,
    PathOutsideRoot,
    UnsafeLayerEntry,
    UnsupportedEntry,
)
from pipeline.layers.store import EntryKind, IndexEntry, LayerStore
from pipeline.layers.unpack import Limits, unpack_layer
from tests.harness.images import (
    Layer,
    Member,
    blockdev,
    chardev,
    dir,
    fifo,
    file,
    hardlink,
    make_layer,
    raw,
    raw_bytes,
    symlink,
)
from tests.harness.tarball import MTIME, tar_bytes

K = EntryKind
NS = 1_000_000_000
T = MTIME * NS


@dataclass(frozen=True)
class Desc:
    """A LayerRef look-alike (pipeline.layers.unpack only needs these four attributes)."""

    digest: Digest
    size: int
    media_type: str
    diff_id: Digest


def descriptor(layer: Layer, *, diff_id: str | None = None) -> Desc:
    return Desc(parse_digest(layer.digest), layer.size, layer.media_type,
                parse_digest(diff_id or layer.diff_id))


def store_blob(tmp_path: Path, layer: Layer) -> Path:
    blobs = tmp_path / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    path = blobs / layer.digest.split(":")[1]
    path.write_bytes(layer.data)
    return path


def unpack(tmp_path: Path, members: Iterable[Member] | Layer, *, limits: Limits | None = None,
           diff_id: str | None = None, **kw: object) -> LayerStore:
    layer = members if isinstance(members, Layer) else make_layer(members, **kw)  # type: ignore[arg-type]
    return unpack_layer(store_blob(tmp_path, layer), descriptor(layer, diff_id=diff_id),
                        tmp_path / "layers", limits=limits or Limits())


def records(tmp_path: Path, members: Iterable[Member] | Layer, **kw: object) -> list[IndexEntry]:
    return list(unpack(tmp_path, members, **kw).entries())


def plain_layer(data: bytes) -> Layer:
    """A plain-tar layer of exactly these uncompressed bytes."""
    digest = digest_of(data)
    return Layer(data, str(digest), len(data), str(digest), "none",
                 "application/vnd.oci.image.layer.v1.tar",
                 "application/vnd.docker.image.rootfs.diff.tar", len(data))


def info(name: str, type: bytes = tarfile.REGTYPE, **attrs: object) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type = type
    ti.mtime = MTIME
    for key, value in attrs.items():
        setattr(ti, key, value)
    return ti


def error_of(tmp_path: Path, members: Sequence[Member] | Layer, **kw: object) -> LayerError:
    with pytest.raises(LayerError) as err:
        unpack(tmp_path, members, **kw)
    assert not (tmp_path / "layers").exists() or not any(
        p for p in (tmp_path / "layers").iterdir()), "a failed unpack left something behind"
    return err.value


# --- records --------------------------------------------------------------------------


def test_every_member_kind_is_recorded(tmp_path: Path) -> None:
    got = records(tmp_path, [
        dir("etc"), file("etc/passwd", b"root:x:0:0\n"), file("etc/empty"),
        symlink("etc/mtab", "/proc/self/mounts"), hardlink("etc/pw", "etc/passwd"),
        chardev("dev/null", 1, 3), blockdev("dev/sda", 8, 0, mode=0o660, gid=6),
        fifo("run/initctl", mode=0o600), dir("tmp", mode=0o1777),
        file("usr/bin/su", b"ELF", mode=0o4755), file("usr/bin/wall", b"ELF2", mode=0o2755, gid=5),
    ])
    assert got == [
        IndexEntry("etc", K.DIRECTORY, 0o755, 0, 0, T),
        IndexEntry("etc/passwd", K.REGULAR, 0o644, 0, 0, T, size=11, content=0),
        IndexEntry("etc/empty", K.REGULAR, 0o644, 0, 0, T),
        IndexEntry("etc/mtab", K.SYMLINK, 0o777, 0, 0, T, link="/proc/self/mounts"),
        IndexEntry("etc/pw", K.HARDLINK, link="etc/passwd"),
        IndexEntry("dev/null", K.CHAR, 0o666, 0, 0, T, rdev=(1, 3)),
        IndexEntry("dev/sda", K.BLOCK, 0o660, 0, 6, T, rdev=(8, 0)),
        IndexEntry("run/initctl", K.FIFO, 0o600, 0, 0, T),
        IndexEntry("tmp", K.DIRECTORY, 0o1777, 0, 0, T),
        IndexEntry("usr/bin/su", K.REGULAR, 0o4755, 0, 0, T, size=3, content=11),
        IndexEntry("usr/bin/wall", K.REGULAR, 0o2755, 0, 5, T, size=4, content=14),
    ]


def test_contents_go_back_to_back_into_one_read_only_pack(tmp_path: Path) -> None:
    big = os.urandom(3 << 20)
    store = unpack(tmp_path, [file("a", b"hello"), file("../../outside-name".replace("../", ""),
                                                        big), file("empty")])
    got = list(store.entries())
    assert [(e.path, e.size, e.content) for e in got] == [
        ("a", 5, 0), ("outside-name", len(big), 5), ("empty", 0, None)]
    assert store.pack_path.read_bytes() == b"hello" + big
    assert store.read_content(5, len(big)) == big
    assert stat.S_IMODE(store.pack_path.stat().st_mode) == 0o444
    assert sorted(p.name for p in store.root.iterdir()) == ["content", "index.jsonl",
                                                            "store.v2.json"]
    assert (store.files_count, store.entries_count, store.content_bytes) == (2, 3, 5 + len(big))
    with pytest.raises(LayerError, match=f"holds 1 of the 2 bytes at {4 + len(big)}"):
        store.read_content(4 + len(big), 2)


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_compressions_give_the_same_records(tmp_path: Path, compression: str) -> None:
    members = [dir("d"), file("d/f", b"x" * 100_000), symlink("d/l", "f")]
    assert records(tmp_path, members, compression=compression) == [
        IndexEntry("d", K.DIRECTORY, 0o755, 0, 0, T),
        IndexEntry("d/f", K.REGULAR, 0o644, 0, 0, T, size=100_000, content=0),
        IndexEntry("d/l", K.SYMLINK, 0o777, 0, 0, T, link="f"),
    ]


@pytest.mark.parametrize(("uid", "gid"), [(0, 0), (1000, 1000), (65535, 65534),
                                          (100000, 100000), (2**31 + 5, 2**32 - 2)])
def test_numeric_ids_are_kept_and_names_ignored(tmp_path: Path, uid: int, gid: int) -> None:
    got = records(tmp_path, [file("f", b"x", uid=uid, gid=gid, uname="root", gname="root")])
    assert (got[0].uid, got[0].gid) == (uid, gid)


def test_base256_ids_and_sizes_from_gnu_headers(tmp_path: Path) -> None:
    # tarfile's GNU format writes numbers that do not fit in octal as base-256.
    got = records(tmp_path, [raw(info("big", uid=2**30, gid=2**33, size=3), b"abc",
                                 format=tarfile.GNU_FORMAT)])
    assert got == [IndexEntry("big", K.REGULAR, 0o644, 2**30, 2**33, T, size=3, content=0)]


@pytest.mark.parametrize(("mtime", "ns"), [
    (b"1700000000.123456789", 1_700_000_000_123_456_789),
    (b"1700000000.5", 1_700_000_000_500_000_000),
    (b"1700000000.1234567891234", 1_700_000_000_123_456_789),
    (b"-1.5", -1_500_000_000),
    (b"0", 0),
])
def test_pax_mtime_is_exact_nanoseconds(tmp_path: Path, mtime: bytes, ns: int) -> None:
    assert records(tmp_path, [file("f", pax={"mtime": mtime})])[0].mtime_ns == ns


def test_xattrs_are_binary_safe_and_trusted_dropped(tmp_path: Path) -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    got = records(tmp_path, [file("ping", b"ELF", xattrs={
        "security.capability": cap, "user.odd": b"\xff\x00\n=\x80",
        "trusted.overlay.opaque": b"y", "user.empty": b""})])
    assert got[0].xattrs == (("security.capability", cap), ("user.empty", b""),
                             ("user.odd", b"\xff\x00\n=\x80"))


def test_long_names_gnu_pax_and_ustar_prefix(tmp_path: Path) -> None:
    deep = "/".join(["directory-name-of-some-length"] * 9) + "/file"
    target = "/".join(["t" * 50] * 5)
    gnu_file = raw(info(deep + "-gnu", size=1), b"g", format=tarfile.GNU_FORMAT)
    gnu_link = raw(info("gnu-symlink", tarfile.SYMTYPE, linkname=target),
                   format=tarfile.GNU_FORMAT)
    ustar = raw(info("p" * 90 + "/" + "n" * 90, size=1), b"u", format=tarfile.USTAR_FORMAT)
    got = records(tmp_path, [file(deep, b"pax"), symlink("pax-symlink", target), gnu_file,
                             gnu_link, ustar, hardlink("pax-hardlink", deep)])
    assert [(e.path, e.link) for e in got] == [
        (deep, None), ("pax-symlink", target), (deep + "-gnu", None), ("gnu-symlink", target),
        ("p" * 90 + "/" + "n" * 90, None), ("pax-hardlink", deep)]


def test_names_that_are_not_utf8_survive(tmp_path: Path) -> None:
    name = b"caf\xe9/\xff\xfe".decode("utf-8", "surrogateescape")
    got = records(tmp_path, [raw(info(name, size=1), b"x", format=tarfile.GNU_FORMAT),
                             symlink("l", name)])
    assert os.fsencode(got[0].path) == b"caf\xe9/\xff\xfe"
    assert got[1].link is not None and os.fsencode(got[1].link) == b"caf\xe9/\xff\xfe"


@pytest.mark.parametrize(("name", "path"), [
    ("./a", "a"), ("a//b/./c", "a/b/c"), ("/etc/x", "etc/x"), ("a/../b", "b"),
    ("./", ""), ("a/b/..", "a"), ("//./a/", "a"), ("...", "..."), (".hidden", ".hidden"),
])
def test_names_are_normalized(tmp_path: Path, name: str, path: str) -> None:
    got = records(tmp_path, [raw(info(name, tarfile.DIRTYPE, mode=0o755))])
    assert got == [IndexEntry(path, K.DIRECTORY, 0o755, 0, 0, T)]


@pytest.mark.parametrize(("target", "link"), [
    ("/etc/passwd", "etc/passwd"), ("./a/./b", "a/b"), ("a/../b", "b"), ("/", "")])
def test_hard_link_targets_are_normalized(tmp_path: Path, target: str, link: str) -> None:
    assert records(tmp_path, [hardlink("h", target)]) == [IndexEntry("h", K.HARDLINK, link=link)]


@pytest.mark.parametrize(("path", "kind", "where"), [
    (".wh.file", K.WHITEOUT, "file"), ("dir/.wh.file", K.WHITEOUT, "dir/file"),
    (".wh..hidden", K.WHITEOUT, ".hidden"), ("dir/.wh..wh..opq", K.OPAQUE, "dir"),
    (".wh..wh..opq", K.OPAQUE, ""), ("./a/b/.wh.c", K.WHITEOUT, "a/b/c"),
])
def test_whiteouts_become_their_own_records(tmp_path: Path, path: str, kind: EntryKind,
                                            where: str) -> None:
    # Their data (if any) is skipped, not stored.
    got = records(tmp_path, [file(path, b"ignored"), file("after", b"kept")])
    assert got == [IndexEntry(where, kind),
                   IndexEntry("after", K.REGULAR, 0o644, 0, 0, T, size=4, content=0)]


@pytest.mark.parametrize("name", [".wh.", ".wh..", ".wh...", "d/.wh..wh.plnk",
                                  ".wh..wh.aufs", ".wh..wh..opq.x"])
def test_malformed_whiteouts_are_refused(tmp_path: Path, name: str) -> None:
    err = error_of(tmp_path, [raw(info(name))])
    assert isinstance(err, MalformedWhiteout) and isinstance(err, UnsafeLayerEntry)
    base = name.rpartition("/")[2]
    assert str(err).endswith(f", entry {name!r}: whiteout {base!r} names no file"
                             " (expected '.wh.<name>' or '.wh..wh..opq')")


@pytest.mark.parametrize(("member", "what", "shown"), [
    (file("../evil", b"x"), "name", "../evil"),
    (file("/../evil", b"x"), "name", "/../evil"),
    (file("a/../../evil", b"x"), "name", "a/../../evil"),
    (dir("../../../tmp"), "name", "../../../tmp/"),
    (hardlink("h", "../victim/file"), "hard-link target", "../victim/file"),
    (hardlink("h", "/a/../../etc"), "hard-link target", "/a/../../etc"),
], ids=["dotdot", "root-dotdot", "nested", "dir", "hardlink", "hardlink-abs"])
def test_dotdot_leaving_the_root_is_refused(tmp_path: Path, member: Member, what: str,
                                            shown: str) -> None:
    err = error_of(tmp_path, [member])
    assert isinstance(err, PathOutsideRoot)
    assert str(err).endswith(f", entry {member.path + ('/' if member.kind == 'dir' else '')!r}:"
                             f" {what} {shown!r} leaves the image root through '..'")


def test_symlink_targets_are_kept_verbatim(tmp_path: Path) -> None:
    got = records(tmp_path, [symlink("a", "../../../../etc/shadow"), symlink("b", "/"),
                             symlink("c", "./x//y/")])
    assert [e.link for e in got] == ["../../../../etc/shadow", "/", "./x//y/"]


def test_the_longest_symlink_target_linux_allows_is_kept(tmp_path: Path) -> None:
    """4,095 bytes (PATH_MAX less the NUL) is the limit's other side: kept whole."""
    assert [e.link for e in records(tmp_path, [symlink("s", "y" * 4095)])] == ["y" * 4095]


@pytest.mark.parametrize(("member", "message"), [
    (raw(info("s", tarfile.SYMTYPE, linkname="")),
     "symlink target must be 1 to 4095 bytes without NUL, got b'' (0 bytes)"),
    (file("p", pax={"path": b"a\0b"}), "name contains a NUL byte"),
    (symlink("s", "x", ) and file("s2", pax={"linkpath": b"x"}), None),
    (symlink("s", "x" * 4096),
     "symlink target must be 1 to 4095 bytes without NUL, got b'" + "x" * 64 + "' (4096 bytes)"),
    (symlink("s", "t" * 1_000_000),
     "symlink target must be 1 to 4095 bytes without NUL, got b'" + "t" * 64
     + "' (1000000 bytes)"),
], ids=["empty-symlink", "nul-in-name", "linkpath-on-file", "symlink-target-4096",
        "symlink-target-1MB"])
def test_bad_names(tmp_path: Path, member: Member, message: str | None) -> None:
    if message is None:  # a linkpath on a regular file is ignored, as Go does
        assert records(tmp_path, [member])[0].link is None
        return
    err = error_of(tmp_path, [member])
    assert isinstance(err, BadName)
    assert str(err).endswith(message)


# --- refused entry types and corrupt archives ---------------------------------------------


@pytest.mark.parametrize("typeflag", [b"V", b"M", b"N", b"D", b"A", b"Z", b"8"])
def test_unknown_entry_types_are_errors(tmp_path: Path, typeflag: bytes) -> None:
    err = error_of(tmp_path, [file("ok", b"1"), raw(info("weird", typeflag))])
    assert isinstance(err, UnsupportedEntry)
    assert str(err).endswith(f", entry 'weird': unknown tar entry type {typeflag!r}; only"
                             " regular files, directories, links, devices and fifos can be"
                             " part of a root filesystem")


@pytest.mark.parametrize("member", [
    raw(info("sparse", tarfile.GNUTYPE_SPARSE)),
    file("sparse", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}),
], ids=["gnu-old", "pax-1.0"])
def test_sparse_files_are_refused(tmp_path: Path, member: Member) -> None:
    err = error_of(tmp_path, [member])
    assert isinstance(err, UnsupportedEntry)
    assert str(err).endswith("entry 'sparse': GNU sparse files are not supported; rebuild"
                             " the layer without `tar --sparse`")


def test_header_checksum_is_checked(tmp_path: Path) -> None:
    data = bytearray(tar_bytes([file("etc/passwd", b"root")]))
    data[0] ^= 0x20  # 'e' -> 'E' without fixing the checksum
    err = error_of(tmp_path, plain_layer(bytes(data)))
    assert isinstance(err, CorruptTar)
    assert "tar header checksum mismatch" in str(err)


def test_not_a_tar_at_all(tmp_path: Path) -> None:
    err = error_of(tmp_path, plain_layer(b"this is not a tar archive".ljust(2048, b"!")))
    assert isinstance(err, CorruptTar)


def test_truncated_in_padding(tmp_path: Path) -> None:
    err = error_of(tmp_path, plain_layer(tar_bytes([file("a", b"x")])[:700]))
    assert isinstance(err, CorruptTar)
    assert str(err).endswith(", entry 'a': tar stream ends inside the padding after this"
                             " file's data")


def test_short_member_is_truncated_tar(tmp_path: Path) -> None:
    err = error_of(tmp_path, [file("a", b"x" * 10), file("b", b"only-this", size=4096)])
    assert isinstance(err, CorruptTar)
    assert str(err).endswith(", entry 'b': tar stream ends inside this file's data"
                             " (9 of 4096 bytes)")


def test_truncated_inside_a_header(tmp_path: Path) -> None:
    data = tar_bytes([file("a", b"x"), file("b", b"y")])
    err = error_of(tmp_path, plain_layer(data[:1024 + 300]))
    assert isinstance(err, CorruptTar)
    assert "truncated inside a header" in str(err)


def test_missing_end_blocks_are_accepted(tmp_path: Path) -> None:
    data = tar_bytes([file("a", b"x")])[:-1024]  # Go's reader accepts this too
    assert [e.path for e in records(tmp_path, plain_layer(data))] == ["a"]


def test_non_zero_block_after_end_of_archive(tmp_path: Path) -> None:
    data = tar_bytes([file("a", b"x")])[:-1024] + bytes(512) + tar_bytes([file("b")])
    err = error_of(tmp_path, plain_layer(data))
    assert isinstance(err, CorruptTar)
    assert "non-zero block follows" in str(err)


def test_trailing_bytes_after_the_end_are_hashed(tmp_path: Path) -> None:
    tar = tar_bytes([file("a", b"x")]) + b"\0" * 5000 + b"trailing junk"
    store = unpack(tmp_path, plain_layer(tar))
    assert store.stream_bytes == len(tar)
    assert store.diff_id == str(digest_of(tar))


def test_diff_id_must_cover_the_trailing_bytes(tmp_path: Path) -> None:
    tar = tar_bytes([file("a", b"x")])
    layer = make_layer([raw_bytes(tar + b"junk")], compression="gzip")
    with pytest.raises(DigestMismatch) as err:
        unpack(tmp_path, layer, diff_id=str(digest_of(tar)))
    assert err.value.expected == str(digest_of(tar))


def test_pax_extended_header_without_entry(tmp_path: Path) -> None:
    pax = tar_bytes([file("a", xattrs={"user.x": b"1"})])
    header_only = pax[:1024]  # the 'x' header and its one block of records
    err = error_of(tmp_path, plain_layer(header_only + bytes(1024)))
    assert isinstance(err, CorruptTar)
    assert "extended header is followed by the end" in str(err)


@pytest.mark.parametrize("records_", [b"5 a=b\n", b"99 path=x\n", b"x path=y\n",
                                      b"9 pathxx\n", b"3 \n"])
def test_malformed_pax_records(tmp_path: Path, records_: bytes) -> None:
    ti = info("././@PaxHeader", tarfile.XHDTYPE, size=len(records_))
    body = ti.tobuf(tarfile.USTAR_FORMAT) + records_.ljust(512, b"\0")
    err = error_of(tmp_path, plain_layer(body + tar_bytes([file("a")])))
    assert isinstance(err, CorruptTar)


@pytest.mark.parametrize(("key", "value"), [("uid", b"-1"), ("size", b"1e3"),
                                            ("mtime", b"yesterday"), ("gid", b"0x10")])
def test_bad_pax_numbers(tmp_path: Path, key: str, value: bytes) -> None:
    err = error_of(tmp_path, [file("f", pax={key: value})])
    assert isinstance(err, CorruptTar)


def test_bad_octal_field(tmp_path: Path) -> None:
    block = bytearray(tar_bytes([file("f")])[:512])
    block[108:116] = b"12x4567\0"  # uid
    block[148:156] = b" " * 8
    block[148:156] = f"{sum(block):06o}\0 ".encode()
    err = error_of(tmp_path, plain_layer(bytes(block) + bytes(1024)))
    assert isinstance(err, CorruptTar)
    assert str(err).endswith("entry 'f': header field uid is not a number (b'12x4567\\x00')")


def test_global_pax_headers_are_ignored(tmp_path: Path) -> None:
    g = info("pax_global_header", tarfile.XGLTYPE)
    records_ = b"52 comment=7f2d5c1c3e4ab1e63f3b8f1d3c0e6a2b1f3d9c8e\n"
    g.size = len(records_)
    head = g.tobuf(tarfile.USTAR_FORMAT) + records_.ljust(512, b"\0")
    assert [e.path for e in records(tmp_path, plain_layer(head + tar_bytes([file("a")])))] == ["a"]


# --- limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("limits", "members", "message"), [
    (Limits(max_entries=3), [file(f"f{i}") for i in range(4)],
     "more than 3 entries (Limits.max_entries)"),
    (Limits(max_header_bytes=1000), [file("a" * 2000)],
     "a 'x' extended header holds 2011 bytes, more than Limits.max_header_bytes = 1000"),
    (Limits(max_path_bytes=64), [file("/".join(["abcdefgh"] * 8))],
     "name is longer than Limits.max_path_bytes = 64"),
    (Limits(), [file("d/" + "n" * 256)],
     "a component of name is 256 bytes, more than Limits.max_component_bytes = 255"),
    (Limits(max_stream_bytes=100_000), [file("big", b"\0" * 200_000)],
     "uncompressed stream passes 100000 bytes (unpack.Limits.max_stream_bytes); a"
     " decompression bomb, or raise the limit for this image"),
    (Limits(), [file("a/" * 1030 + "f")],  # ~2 KiB: heap corruption in mkfs.ext4 1.47.0
     "name is 1031 components deep, more than Limits.max_depth = 128 (deeper trees crash"
     " mkfs.ext4)"),
], ids=["entries", "header", "path", "component", "stream", "depth"])
def test_limits(tmp_path: Path, limits: Limits, members: list[Member], message: str) -> None:
    err = error_of(tmp_path, members, limits=limits)
    assert isinstance(err, LimitExceeded)
    assert str(err).endswith(message)


def test_limits_are_generous_by_default() -> None:
    limits = Limits()
    assert limits.max_stream_bytes == 64 << 30
    assert limits.max_entries == 10_000_000
    assert (limits.max_path_bytes, limits.max_component_bytes) == (4096, 255)
    with pytest.raises(AttributeError):
        limits.max_entries = 1  # type: ignore[misc]


# --- the store's life cycle ----------------------------------------------------------------


def test_store_is_reused_and_opened_only_when_finished(tmp_path: Path) -> None:
    layer = make_layer([file("a", b"1")])
    first = unpack(tmp_path, layer)
    index_inode = (first.root / "index.jsonl").stat().st_ino
    again = unpack(tmp_path, layer)
    assert again.root == first.root
    assert (again.root / "index.jsonl").stat().st_ino == index_inode
    opened = LayerStore.open(tmp_path / "layers", parse_digest(layer.digest))
    assert (opened.digest, opened.diff_id) == (layer.digest, layer.diff_id)
    assert LayerStore.open(tmp_path / "layers", layer.digest).root == opened.root
    with pytest.raises(BadDigest):
        LayerStore.open(tmp_path / "layers", "sha256:../../etc")
    assert [p.name for p in (tmp_path / "layers").iterdir()] == [layer.digest[7:]]


def test_open_refuses_missing_and_foreign_stores(tmp_path: Path) -> None:
    layer = make_layer([file("a", b"1")])
    digest = parse_digest(layer.digest)
    with pytest.raises(LayerError) as err:
        LayerStore.open(tmp_path / "layers", digest)
    assert str(err.value) == (f"layer {layer.digest}: no finished layer store at"
                              f" {str(tmp_path / 'layers' / digest.hex)!r}; unpack the"
                              " layer first")
    # A half-built store (no marker) under the final name is not a store.
    (tmp_path / "layers" / digest.hex / "files").mkdir(parents=True)
    with pytest.raises(LayerError):
        LayerStore.open(tmp_path / "layers", digest)
    other = make_layer([file("b", b"2")])
    store = unpack(tmp_path / "o", other)
    os.rmdir(tmp_path / "layers" / digest.hex / "files")
    os.rmdir(tmp_path / "layers" / digest.hex)
    os.rename(store.root, tmp_path / "layers" / digest.hex)
    with pytest.raises(LayerError) as err:
        LayerStore.open(tmp_path / "layers", digest)
    assert "delete it and unpack the layer again" in str(err.value)


def test_failed_unpack_leaves_nothing(tmp_path: Path) -> None:
    layer = make_layer([file("a", b"x" * 100_000), file("../evil")])
    with pytest.raises(PathOutsideRoot):
        unpack(tmp_path, layer)
    assert list((tmp_path / "layers").iterdir()) == []


def test_wrong_diff_id_leaves_nothing(tmp_path: Path) -> None:
    layer = make_layer([file("a", b"x")])
    wrong = "sha256:" + hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(DigestMismatch) as err:
        unpack(tmp_path, layer, diff_id=wrong)
    assert str(err.value) == (f"layer {layer.digest} uncompressed (diff_id): expected {wrong},"
                              f" got {layer.diff_id}")
    assert list((tmp_path / "layers").iterdir()) == []


def test_blob_size_must_match_descriptor(tmp_path: Path) -> None:
    layer = make_layer([file("a", b"x")])
    blob = store_blob(tmp_path, layer)
    desc = Desc(parse_digest(layer.digest), layer.size + 1, layer.media_type,
                parse_digest(layer.diff_id))
    with pytest.raises(LayerError) as err:
        unpack_layer(blob, desc, tmp_path / "layers")
    assert f"is {layer.size} bytes but the descriptor says {layer.size + 1}" in str(err.value)


def test_concurrent_unpacks_of_one_layer_agree(tmp_path: Path) -> None:
    layer = make_layer([file(f"f{i}", os.urandom(2000)) for i in range(300)])
    blob = store_blob(tmp_path, layer)
    results: list[LayerStore | BaseException] = []
    barrier = threading.Barrier(4)

    def work() -> None:
        barrier.wait()
        try:
            results.append(unpack_layer(blob, descriptor(layer), tmp_path / "layers"))
        except BaseException as e:  # pragma: no cover - reported below
            results.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(isinstance(r, LayerStore) for r in results), results
    assert {r.root for r in results if isinstance(r, LayerStore)} == {
        tmp_path / "layers" / layer.digest[7:]}
    assert [p.name for p in (tmp_path / "layers").iterdir()] == [layer.digest[7:]]


def test_index_round_trips_every_field() -> None:
    entry = IndexEntry("a/\udcff\n\"b", K.REGULAR, 0o7777, 2**40, 7, -5,
                       (("user.\udce9", b"\0\xff"),), 12, 3, None, None)
    line = entry.to_json()
    assert line.isascii() and "\n" not in line
    others = [IndexEntry("d", K.CHAR, 0o600, 1, 2, 3, rdev=(4095, 2**20)),
              IndexEntry("w", K.WHITEOUT), IndexEntry("", K.OPAQUE),
              IndexEntry("h", K.HARDLINK, link="x/\udc80")]
    text = "".join(e.to_json() + "\n" for e in [entry, *others])   # as the index holds them
    assert [IndexEntry.from_record(r) for r in decode_lines(text)] == [entry, *others]


def test_a_store_an_older_version_left_is_made_again(tmp_path: Path) -> None:
    """Format 1 kept a file per member under files/ and its marker in store.json: the
    next unpack of the layer replaces it (a store of this format is one stat away)."""
    layer = make_layer([file("a", b"hello")])
    old = LayerStore.path_for(tmp_path / "layers", layer.digest)
    (old / "files").mkdir(parents=True)
    (old / "files" / "000000").write_bytes(b"hello")
    (old / "store.json").write_text(json.dumps({"format": 1, "digest": layer.digest}))
    with pytest.raises(LayerError, match="no finished layer store"):
        LayerStore.open(tmp_path / "layers", layer.digest)
    store = unpack(tmp_path, layer)
    assert sorted(p.name for p in old.iterdir()) == ["content", "index.jsonl", "store.v2.json"]
    assert store.read_content(0, 5) == b"hello"
    assert LayerStore.open(tmp_path / "layers", layer.digest).files_count == 1


def test_reading_tar_written_by_tarfile_itself(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("a.txt", b"alpha"), ("sub/b.bin", bytes(range(256)) * 40)):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mtime, ti.uname = len(data), MTIME, "ünïcode"
            tf.addfile(ti, io.BytesIO(data))
    store = unpack(tmp_path, plain_layer(buf.getvalue()))
    got = list(store.entries())
    assert [(e.path, e.size) for e in got] == [("a.txt", 5), ("sub/b.bin", 10240)]
    assert store.read_content(got[1].content or 0, 10240) == bytes(range(256)) * 40
