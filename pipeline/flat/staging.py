"""Materialise a :class:`~.tree.Tree` as a flat image directory (:mod:`.flatimage`).

``entries.jsonl`` carries every entry's metadata and where its bytes are; the
staging tree, made only for the mkfs builder (``staging=True``), gives
``mkfs.ext4 -d`` names, contents and link structure. Its rules:

- A fresh directory, mode 0700, built as ``<parent>/.tmp-<name>-<pid>-<rand>``
  and renamed to its final name only when complete.
- Creation happens in three passes over the tree: directories, then regular
  files, fifos and device placeholders, then symlinks. Every creation is one
  name relative to an open directory fd (``mkdir``/``link``/``symlink``/
  ``mkfifo`` with ``dir_fd``), and directories are opened with
  ``O_NOFOLLOW``: no path we create is ever resolved through a link, and
  there is no link until the last pass anyway.
- Regular files are hard links to the layer stores' extracted files (a file
  per content, made from the pack once per layer: ``layers.extracted``):
  nothing is copied per image. ``mkfs.ext4 -d`` treats two names with one
  host (st_dev, st_ino) as one inode, so a host inode is shared by two
  staging names exactly when the image shares an inode between them: a
  store file already used by another image inode is copied instead
  (``copy_file_range`` from the pack), and empty files and device
  placeholders are fresh files. When a store file cannot be linked (another
  filesystem, link count limit) the file is copied.
- Host files never carry the image's owners, setuid/setgid bits or device
  numbers: store files are 0444, new files 0644 and directories 0755, owned
  by whoever runs the build. The image's metadata is data in entries.jsonl.

Trusts: only its own paths; the tree's names are single components that
``unpack`` checked (no "/", NUL, ".", ".." or over-long names).
"""

from __future__ import annotations

import errno
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import structlog

from pipeline.base.files import publish_dir, remove_path, temp_path
from pipeline.flat.flatten import flatten
from pipeline.flat.image import (
    ENTRIES_NAME,
    HEADER_NAME,
    ROOTFS_NAME,
    FileType,
    FlatEntry,
    FlatHeader,
    chain_key,
    is_current,
    write_entries,
    write_header,
)
from pipeline.flat.tree import Inode, Tree
from pipeline.layers.extracted import content_file_name, copy_range, extracted_files
from pipeline.layers.store import LayerStore

__all__ = ["materialize", "flatten_image"]

log = structlog.get_logger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_SPARE = ".spare"


def flatten_image(stores: Sequence[LayerStore], flat_root: Path, *,
                  staging: bool = True) -> Path:
    """``<flat_root>/<chain key>``, flattening and materialising it unless it exists;
    ``staging``: with its staging tree (added to a flat image made without one).
    Callers hold the chain's lock (``RunContext.chain_lock``) or own the flat root."""
    chain = [store.digest for store in stores]
    dest = Path(flat_root) / chain_key(chain)
    if dest.exists() and not is_current(dest):
        remove_path(dest)                   # an older format: made again below
    if is_current(dest):
        if staging and not (dest / ROOTFS_NAME).is_dir():
            _add_staging(flatten(stores), dest, chain)
        return dest
    return materialize(flatten(stores), dest, chain, staging=staging)


def _add_staging(tree: Tree, dest: Path, chain: Sequence[str]) -> None:
    """Give the finished flat image ``dest`` its staging tree: made whole beside it, then
    renamed in, so a reader sees no staging tree or a complete one."""
    other = materialize(tree, temp_path(dest), chain, staging=True)
    try:
        os.rename(other / ROOTFS_NAME, dest / ROOTFS_NAME)
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
    finally:
        remove_path(other)


def materialize(tree: Tree, dest: Path, chain: Sequence[str], *, staging: bool = True) -> Path:
    """Write ``tree`` as a flat image at ``dest`` (atomically, with its staging tree when
    ``staging``) and return ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(dest)
    started = time.monotonic()
    os.mkdir(tmp, 0o700)
    try:
        header = _Builder(tree, tmp, tuple(chain)).build(staging=staging)
        if not publish_dir(tmp, dest):
            # Another run finished the same chain first; flat images are keyed by content.
            return dest
    except BaseException:
        remove_path(tmp)
        raise
    log.debug("flat.materialized", dest=str(dest), entries=header.entries, inodes=header.inodes,
             bytes=header.regular_bytes, seconds=round(time.monotonic() - started, 3))
    return dest


class _Dir:
    """A directory on the current walk path; ``fd`` is -1 until something needs it."""

    __slots__ = ("path", "name", "fd")

    def __init__(self, path: str, name: bytes, fd: int) -> None:
        self.path = path
        self.name = name
        self.fd = fd


class _Builder:
    def __init__(self, tree: Tree, tmp: Path, chain: tuple[str, ...]) -> None:
        self.tree = tree
        self.tmp = tmp
        self.chain = chain
        self.items = [(path, os.fsencode(name_str(path)), inode) for path, inode in tree.walk()]
        self.names: dict[int, int] = {}
        for _, _, inode in self.items:
            self.names[id(inode)] = self.names.get(id(inode), 0) + 1
        self.pack_fds: dict[str, int] = {}               # store digest -> its pack
        self.files_fds: dict[str, int] = {}              # store digest -> its files/
        self.used: dict[tuple[str, int], int] = {}       # (store, content) -> id(inode)
        self.sources: dict[int, tuple[int, bytes]] = {}  # id(inode) -> (dir fd, name)
        self.spare_fd = -1
        self.spares = 0
        self.copied: dict[str, int] = {}  # why store files were copied, not linked -> count

    def build(self, *, staging: bool) -> FlatHeader:
        if not staging:
            return self._write_metadata()
        os.mkdir(self.tmp / ROOTFS_NAME, 0o700)
        os.mkdir(self.tmp / _SPARE, 0o700)
        self.spare_fd = os.open(self.tmp / _SPARE, _DIR_FLAGS)
        try:
            for _ in self._pass(lambda i: False, create_dirs=True):
                pass
            for fd, name, inode in self._pass(lambda i: not i.is_dir
                                              and i.type is not FileType.SYMLINK):
                self._create(fd, name, inode)
            for fd, name, inode in self._pass(lambda i: i.type is FileType.SYMLINK):
                assert inode.target is not None
                os.symlink(os.fsencode(inode.target), name, dir_fd=fd)
        finally:
            os.close(self.spare_fd)
            for fd in (*self.pack_fds.values(), *self.files_fds.values()):
                os.close(fd)
        shutil.rmtree(self.tmp / _SPARE)
        for reason, count in self.copied.items():
            log.warning("staging.copied", files=count, reason=reason,
                        hint="keep the layer and flat caches on one filesystem, owned by"
                             " the user who builds")
        return self._write_metadata()

    def _pass(self, select: Callable[[Inode], bool], *, create_dirs: bool = False
              ) -> Iterator[tuple[int, bytes, Inode]]:
        """Yield (parent fd, name, inode) for selected inodes, in walk order.

        The walk is depth-first preorder, so the directories on the current
        path form a stack; each is opened (relative to its parent's fd, with
        O_NOFOLLOW) only when something must be created in it, and closed once
        its subtree is done.
        """
        stack = [_Dir("", b"", os.open(self.tmp / ROOTFS_NAME, _DIR_FLAGS))]

        def fd_of_top() -> int:
            first = len(stack) - 1
            while stack[first].fd == -1:
                first -= 1
            for i in range(first + 1, len(stack)):
                stack[i].fd = os.open(stack[i].name, _DIR_FLAGS, dir_fd=stack[i - 1].fd)
            return stack[-1].fd

        try:
            for path, name, inode in self.items[1:]:
                parent = path.rpartition("/")[0]
                while stack[-1].path != parent:
                    closing = stack.pop().fd
                    if closing != -1:
                        os.close(closing)
                if inode.is_dir and create_dirs:
                    os.mkdir(name, 0o755, dir_fd=fd_of_top())
                if select(inode):
                    yield fd_of_top(), name, inode
                if inode.children:
                    stack.append(_Dir(path, name, -1))
        finally:
            for entry in stack:
                if entry.fd != -1:
                    os.close(entry.fd)

    def _create(self, fd: int, name: bytes, inode: Inode) -> None:
        key = id(inode)
        if key in self.sources:  # a further name of an inode already on the host
            src_fd, src_name = self.sources[key]
            os.link(src_name, name, src_dir_fd=src_fd, dst_dir_fd=fd, follow_symlinks=False)
            return
        if inode.type is FileType.FIFO:
            os.mkfifo(name, 0o644, dir_fd=fd)
            return
        source = self._store_source(inode)
        if source is not None:
            try:
                os.link(source[1], name, src_dir_fd=source[0], dst_dir_fd=fd,
                        follow_symlinks=False)
                self.sources[key] = source
                return
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    raise
                self.copied[e.strerror or str(e.errno)] = (
                    self.copied.get(e.strerror or str(e.errno), 0) + 1)
        if self.names[key] > 1:  # several names: make the file once, link every name
            spare = str(self.spares).encode()
            self.spares += 1
            self._new_file(self.spare_fd, spare, inode)
            self.sources[key] = (self.spare_fd, spare)
            os.link(spare, name, src_dir_fd=self.spare_fd, dst_dir_fd=fd, follow_symlinks=False)
        else:
            self._new_file(fd, name, inode)

    def _store_source(self, inode: Inode) -> tuple[int, bytes] | None:
        """The extracted store file to link for a regular inode, unless another inode
        has it."""
        if inode.type is not FileType.REGULAR or inode.content is None or not inode.size:
            return None
        store, content = inode.content
        claimed = self.used.setdefault((store.digest, content), id(inode))
        if claimed != id(inode):
            return None
        fd = self.files_fds.get(store.digest)
        if fd is None:
            fd = self.files_fds[store.digest] = os.open(extracted_files(store), _DIR_FLAGS)
        return fd, content_file_name(content)

    def _new_file(self, dir_fd: int, name: bytes, inode: Inode) -> None:
        """A fresh host file: a copy of the inode's content, or empty (devices, empty files)."""
        out = os.open(name, _NEW_FILE, 0o644, dir_fd=dir_fd)
        try:
            if inode.type is FileType.REGULAR and inode.content is not None and inode.size:
                store, content = inode.content
                pack = self.pack_fds.get(store.digest)
                if pack is None:
                    pack = self.pack_fds[store.digest] = os.open(
                        store.pack_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                copy_range(pack, content, out, inode.size)
        finally:
            os.close(out)

    def _write_metadata(self) -> FlatHeader:
        groups: dict[int, int] = {}
        seen: set[int] = set()
        directories = regular_bytes = 0
        position = {digest: i for i, digest in reversed(list(enumerate(self.chain)))}

        def entries() -> Iterator[FlatEntry]:
            nonlocal directories, regular_bytes
            for path, _, inode in self.items:
                key = id(inode)
                group = None
                if self.names[key] > 1:
                    group = groups.setdefault(key, len(groups) + 1)
                if key not in seen:
                    seen.add(key)
                    directories += inode.is_dir
                    regular_bytes += inode.size if inode.type is FileType.REGULAR else 0
                content = None
                if inode.type is FileType.REGULAR and inode.content is not None and inode.size:
                    content = (position[inode.content[0].digest], inode.content[1])
                yield FlatEntry(path=path, type=inode.type, mode=inode.mode & 0o7777,
                                uid=inode.uid, gid=inode.gid, mtime_ns=inode.mtime_ns,
                                xattrs=inode.xattrs,
                                size=inode.size if inode.type is FileType.REGULAR else 0,
                                target=inode.target if inode.type is FileType.SYMLINK else None,
                                rdev=inode.rdev if inode.type in (FileType.CHAR, FileType.BLOCK)
                                else None,
                                link_group=group, content=content)

        write_entries(self.tmp / ENTRIES_NAME, entries())
        header = FlatHeader(chain=self.chain, entries=len(self.items), inodes=len(seen),
                            directories=directories, regular_bytes=regular_bytes)
        write_header(self.tmp / HEADER_NAME, header)
        return header


def name_str(path: str) -> str:
    """The last component of a tree path."""
    return path.rpartition("/")[2]
