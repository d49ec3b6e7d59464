"""Trees for the native writer's tests: flat entries plus content files, built in code.

``TreeBuilder`` writes each regular file's bytes to a numbered content file,
or with ``packed`` to ranges of one pack (as a layer store does), sparse
where asked (``holes``), and keeps what the
image must hold; ``random_tree`` generates seeded trees from a small
vocabulary (odd names incl. non-UTF-8 bytes, sizes, holes, xattrs of every
size class, hard links, symlinks of all lengths, devices, deep paths).
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.ext4.native.inputs import ContentRef, FileType, FlatEntry

__all__ = ["Tree", "TreeBuilder", "random_tree", "every_kind", "with_parents", "MTIME_NS",
           "BLOCK"]

MTIME_NS = 1_700_000_000_123_456_789
BLOCK = 4096


@dataclass
class Tree:
    entries: list[FlatEntry]
    files: dict[str, ContentRef]
    """Where the bytes of every non-empty regular path are (hard links share them)."""
    data_blocks: dict[str, int]
    """Blocks of data (not holes) each non-empty regular path must own."""
    sha256: dict[str, str]

    def content(self, entry: FlatEntry) -> ContentRef | None:
        return self.files.get(entry.path)


def _order(path: str) -> tuple[bytes, ...]:
    return tuple(os.fsencode(p) for p in path.split("/")) if path else ()


@dataclass
class TreeBuilder:
    """Entries and their contents: a file each under ``store``, or with ``packed`` all in
    one pack ``store/content`` as a layer store holds them (dense files back to back, at
    any offset; a file with holes on blocks of its own, so that the blocks it must own
    are the same as in a file of its own)."""

    store: Path
    packed: bool = False
    root: FlatEntry = field(default_factory=lambda: FlatEntry("", FileType.DIRECTORY, 0o755,
                                                              0, 0, MTIME_NS))
    _entries: dict[str, FlatEntry] = field(default_factory=dict)
    _files: dict[str, ContentRef] = field(default_factory=dict)
    _pack_end: int = 0
    _blocks: dict[str, int] = field(default_factory=dict)
    _sha: dict[str, str] = field(default_factory=dict)
    _groups: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.store.mkdir(parents=True, exist_ok=True)

    def _add(self, entry: FlatEntry) -> None:
        assert entry.path not in self._entries, entry.path
        self._entries[entry.path] = entry

    def dir(self, path: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0,
            mtime_ns: int = MTIME_NS, xattrs: dict[str, bytes] | None = None) -> None:
        self._add(FlatEntry(path, FileType.DIRECTORY, mode, uid, gid, mtime_ns, _x(xattrs)))

    def file(self, path: str, data: bytes = b"", mode: int = 0o644, *,
             holes: list[tuple[int, bytes]] | None = None, size: int | None = None,
             checksum: bool = True, uid: int = 0, gid: int = 0, mtime_ns: int = MTIME_NS,
             xattrs: dict[str, bytes] | None = None) -> None:
        """A regular file: ``data`` dense, or ``size`` bytes of holes with ``holes``
        chunks (offset, bytes) written into them."""
        total = len(data) if size is None else size
        if total:
            if self.packed:
                where = self.store / "content"
                start = self._pack_end if holes is None else -(-self._pack_end // BLOCK) * BLOCK
                # After holes, the next file starts on a block of its own too.
                self._pack_end = start + total if holes is None else \
                    -(-(start + total) // BLOCK) * BLOCK
                ref: ContentRef = (str(where), start)
            else:
                where = self.store / f"{len(self._files):06d}"
                start = 0
                ref = (str(where), None)
            fd = os.open(where, os.O_CREAT | os.O_WRONLY | (0 if self.packed else os.O_TRUNC),
                         0o444 if not self.packed else 0o644)
            h = hashlib.sha256()
            try:
                if holes is None:
                    os.pwrite(fd, data, start)
                    h.update(data)
                    self._blocks[path] = -(-total // BLOCK)
                else:
                    if os.fstat(fd).st_size < start + total:
                        os.ftruncate(fd, start + total)
                    image = bytearray(total if checksum else 0)
                    touched: set[int] = set()
                    for offset, chunk in holes:
                        os.pwrite(fd, chunk, start + offset)
                        if checksum:
                            image[offset:offset + len(chunk)] = chunk
                        touched.update(range(offset // BLOCK, -(-(offset + len(chunk)) // BLOCK)))
                    h.update(image)
                    self._blocks[path] = len(touched)
            finally:
                os.close(fd)
            self._files[path] = ref
            self._sha[path] = h.hexdigest()
        else:
            self._sha[path] = hashlib.sha256(b"").hexdigest()
        self._add(FlatEntry(path, FileType.REGULAR, mode, uid, gid, mtime_ns, _x(xattrs),
                            size=total))

    def hardlink(self, path: str, to: str) -> None:
        first = self._entries[to]
        group = self._groups.setdefault(to, len(self._groups) + 1)
        self._entries[to] = replace(first, link_group=group)
        self._add(replace(first, path=path, link_group=group))
        if to in self._files:
            self._files[path] = self._files[to]
            self._blocks[path] = self._blocks[to]
        self._sha[path] = self._sha[to]

    def symlink(self, path: str, target: str, *, uid: int = 0, gid: int = 0,
                mtime_ns: int = MTIME_NS, xattrs: dict[str, bytes] | None = None) -> None:
        self._add(FlatEntry(path, FileType.SYMLINK, 0o777, uid, gid, mtime_ns, _x(xattrs),
                            target=target))

    def device(self, path: str, kind: FileType, major: int, minor: int, mode: int = 0o660,
               *, uid: int = 0, gid: int = 0, mtime_ns: int = MTIME_NS,
               xattrs: dict[str, bytes] | None = None) -> None:
        self._add(FlatEntry(path, kind, mode, uid, gid, mtime_ns, _x(xattrs),
                            rdev=(major, minor)))

    def fifo(self, path: str, mode: int = 0o600, *, uid: int = 0, gid: int = 0,
             mtime_ns: int = MTIME_NS, xattrs: dict[str, bytes] | None = None) -> None:
        self._add(FlatEntry(path, FileType.FIFO, mode, uid, gid, mtime_ns, _x(xattrs)))

    def build(self) -> Tree:
        ordered = sorted(self._entries.values(), key=lambda e: _order(e.path))
        return Tree([self.root, *ordered], dict(self._files), dict(self._blocks),
                    dict(self._sha))


def _x(xattrs: dict[str, bytes] | None) -> tuple[tuple[str, bytes], ...]:
    return tuple(sorted((xattrs or {}).items()))


_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789._-+ =~@#%,"
_XATTR_SIZES = (0, 1, 20, 60, 200, 1000, 3000)
_XATTR_BUDGET = 3900                       # value bytes one inode and one block surely hold


def _name(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.1:
        raw = bytes(rng.choice(range(0x80, 0x100)) for _ in range(rng.randint(1, 12)))
        raw += b"x"
    elif roll < 0.15:
        raw = bytes(rng.choice(_NAME_BYTES) for _ in range(rng.randint(200, 255)))
    else:
        raw = bytes(rng.choice(_NAME_BYTES) for _ in range(rng.randint(1, 24)))
    if raw in (b".", b".."):
        raw += b"_"
    return os.fsdecode(raw)


def random_tree(store: Path, seed: int, *, entries: int = 300,
                max_file: int = 256 * 1024, packed: bool = False) -> Tree:
    """A seeded random tree of about ``entries`` entries (contents ``packed`` in one file,
    or a file each)."""
    rng = random.Random(seed)
    b = TreeBuilder(store, packed=packed)
    dirs = [""]
    files: list[str] = []
    used: set[str] = set()
    depth = "/".join(f"d{i}" for i in range(40))       # a deep path
    for i in range(40):
        b.dir("/".join(depth.split("/")[:i + 1]))
    dirs.append(depth)
    for _ in range(entries):
        parent = rng.choice(dirs)
        path = f"{parent}/{_name(rng)}" if parent else _name(rng)
        if path in used or len(os.fsencode(path)) > 3500:
            continue
        used.add(path)
        uid = rng.choice([0, 1000, 65534, 2**31 + 7, 2**32 - 2])
        gid = rng.choice([0, 100, 70000, 2**32 - 2])
        mtime_ns = rng.choice([MTIME_NS, -1_234_567_890_123_456_789 // 1000, 0,
                               2**33 * 10**9 + 17, rng.randrange(10**18)])
        xattrs: dict[str, bytes] = {}
        if rng.random() < 0.3:
            sizes = [rng.choice(_XATTR_SIZES) for _ in range(rng.randint(1, 3))]
            while sum(sizes) > _XATTR_BUDGET:
                sizes.pop()
            xattrs = {f"user.k{j}": rng.randbytes(n) for j, n in enumerate(sizes)}
        kind = rng.random()
        if kind < 0.2:
            b.dir(path, rng.choice([0o755, 0o700, 0o1777, 0o2755]), uid=uid, gid=gid,
                  mtime_ns=mtime_ns, xattrs=xattrs)
            dirs.append(path)
        elif kind < 0.6:
            size = rng.choice([0, 1, 4095, 4096, 4097, rng.randrange(max_file)])
            if size > 3 * BLOCK and rng.random() < 0.4:
                chunks = [(rng.randrange(size - 100), os.urandom(rng.randint(1, 100)))
                          for _ in range(rng.randint(0, 4))]
                b.file(path, size=size, holes=chunks, mode=rng.choice([0o644, 0o4755]),
                       uid=uid, gid=gid, mtime_ns=mtime_ns, xattrs=xattrs)
            else:
                b.file(path, rng.randbytes(size), mode=rng.choice([0o644, 0o755, 0o6755]),
                       uid=uid, gid=gid, mtime_ns=mtime_ns, xattrs=xattrs)
            files.append(path)
        elif kind < 0.7 and files:
            b.hardlink(path, rng.choice(files))
        elif kind < 0.85:
            b.symlink(path, "t" * rng.choice([1, 58, 59, 60, 61, 200, 4095]), uid=uid,
                      gid=gid, mtime_ns=mtime_ns, xattrs=xattrs)
        elif kind < 0.9:
            b.device(path, rng.choice([FileType.CHAR, FileType.BLOCK]),
                     rng.choice([1, 8, 259, 4095]), rng.choice([0, 3, 255, 256, 1048575]),
                     uid=uid, gid=gid, mtime_ns=mtime_ns, xattrs=xattrs)
        else:
            b.fifo(path, uid=uid, gid=gid, mtime_ns=mtime_ns, xattrs=xattrs)
    return b.build()


PING_CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
ACL = bytes.fromhex("02000000" "01000600ffffffff" "02000400e8030000" "04000400ffffffff"
                    "10000400ffffffff" "20000000ffffffff")


def every_kind(store: Path, *, packed: bool = False) -> Tree:
    """One of every kind of entry and limit the writer handles."""
    b = TreeBuilder(store, packed=packed)
    b.dir("etc")
    b.file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
    b.file("etc/empty")
    b.dir("usr", 0o755, uid=1000, gid=1000)
    b.dir("usr/bin")
    b.file("usr/bin/ping", b"\x7fELF" * 5000, 0o4755, uid=0, gid=0,
           xattrs={"security.capability": PING_CAPABILITY})
    b.file("usr/bin/su", b"su", 0o6755, uid=2**32 - 2, gid=2**31 + 5)
    b.hardlink("usr/bin/su2", "usr/bin/su")
    b.hardlink("etc/su3", "usr/bin/su")
    b.file("usr/bin/big", os.urandom(3 * 1024 * 1024 + 17))
    b.file("usr/bin/sparse", size=40 * 1024 * 1024,
           holes=[(0, b"head"), (5 * 1024 * 1024 + 3, b"middle" * 1000),
                  (40 * 1024 * 1024 - 3, b"end")])
    b.file("usr/bin/allhole", size=9 * 4096, holes=[])
    # 1,500 one-block extents: a two-level extent tree.
    b.file("usr/bin/holey", size=3000 * 4096, holes=[(k * 8192, b"h") for k in range(1500)])
    b.dir("tmp", 0o1777)
    b.symlink("bin", "usr/bin")
    b.symlink("etc/fast59", "f" * 59)
    b.symlink("etc/slow60", "s" * 60)
    b.symlink("etc/max", "m" * 4095)
    b.device("dev_null", FileType.CHAR, 1, 3, 0o666)
    b.device("dev_nvme", FileType.BLOCK, 259, 70000)
    b.device("dev_big", FileType.CHAR, 4095, 1048575)
    b.fifo("run_fifo", 0o620, uid=5, gid=6)
    b.file("times/old", b"", mtime_ns=-2_000_000_000_987_654_321)
    b.file("times/y2040", b"", mtime_ns=2_208_988_800_000_000_001)
    b.file("times/y2300", b"", mtime_ns=11_000_000_000_000_000_007)
    b.file("xattrs/inode", b"x", xattrs={"user.a": b"1", "trusted.t": b""})
    b.file("xattrs/block", b"x", xattrs={"user.big": b"v" * 3000, "user.small": b"s",
                                         "security.selinux": b"system_u:object_r:bin_t\0"})
    b.file("xattrs/acl", b"x", xattrs={"system.posix_acl_access": ACL})
    b.dir("xattrs/aclm", xattrs={"system.posix_acl_default": ACL})
    b.file(os.fsdecode(b"names/\xff\xfe not utf-8"), b"odd")
    b.file("names/" + "n" * 255, b"long")
    return with_parents(b.build())


def with_parents(tree: Tree) -> Tree:
    """``tree`` with its implicit parent directories added (root-owned 0755)."""
    have = {e.path for e in tree.entries}
    extra = []
    for e in tree.entries:
        parts = e.path.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in have:
                have.add(parent)
                extra.append(FlatEntry(parent, FileType.DIRECTORY, 0o755, 0, 0, MTIME_NS))
    entries = sorted([*tree.entries, *extra],
                     key=lambda e: tuple(os.fsencode(p) for p in e.path.split("/"))
                     if e.path else ())
    return Tree(entries, tree.files, tree.data_blocks, tree.sha256)
