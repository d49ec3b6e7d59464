"""The in-memory image tree, with symlink resolution that never leaves it.

A :class:`Tree` is a root directory :class:`Inode`; a directory holds a dict
from name to inode, and a hard link is the same inode object under two names.
Paths are resolved here the way the kernel would inside the container, as if
the tree were chroot'ed: an absolute symlink target restarts at the tree's
root, ``..`` at the root stays at the root, and at most
:data:`MAX_SYMLINK_FOLLOWS` links are followed per lookup (Linux's
MAXSYMLINKS). Nothing here touches the host filesystem, so a symlink in a
layer can redirect a later write only to somewhere else in the image.

Each directory also remembers which of its names the layer being applied has
touched (written, or passed through as an ancestor of a write). Whiteouts use
that to remove only entries from lower layers (image-spec layer.md); it is
the per-path "upper" set umoci keeps, stored on the directories so that its
cost is one small set per directory the current layer wrote into.

Refuses to trust nothing in particular: callers (``flatten``) pass names that
``unpack`` already normalized; everything here is in memory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from pipeline.flat.image import FileType
from pipeline.layers.store import LayerStore

__all__ = ["Inode", "Tree", "TreePathError", "SymlinkLoop", "NotADirectoryInTree",
           "MAX_SYMLINK_FOLLOWS"]

# Linux's MAXSYMLINKS: the kernel gives ELOOP after this many links in one lookup.
MAX_SYMLINK_FOLLOWS = 40


class TreePathError(Exception):
    """A path cannot be resolved inside the tree; ``flatten`` reports it per layer entry."""

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class SymlinkLoop(TreePathError):
    """More than MAX_SYMLINK_FOLLOWS symlinks in one lookup."""


class NotADirectoryInTree(TreePathError):
    """A path component that must be a directory is a file, device or fifo."""


class Inode:
    """One file, directory, link, device or fifo of the image."""

    __slots__ = ("type", "mode", "uid", "gid", "mtime_ns", "xattrs", "size", "content",
                 "target", "rdev", "children", "nlink", "upper_layer", "upper_names")

    def __init__(self, type: FileType, *, mode: int = 0o755, uid: int = 0, gid: int = 0,
                 mtime_ns: int = 0, xattrs: tuple[tuple[str, bytes], ...] = (), size: int = 0,
                 content: tuple[LayerStore, int] | None = None, target: str | None = None,
                 rdev: tuple[int, int] | None = None) -> None:
        self.type = type
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.mtime_ns = mtime_ns
        self.xattrs = xattrs
        self.size = size
        self.content = content
        """Regular files: (store, offset in its pack) of the bytes; None when empty."""
        self.target = target
        self.rdev = rdev
        self.children: dict[str, Inode] | None = {} if type is FileType.DIRECTORY else None
        self.nlink = 0
        """Names this inode has in the tree (hard links share one inode)."""
        self.upper_layer = -1
        self.upper_names: set[str] = set()

    def __repr__(self) -> str:
        return f"<Inode {self.type.value} {self.mode:04o} {self.uid}:{self.gid} nlink={self.nlink}>"

    @property
    def is_dir(self) -> bool:
        return self.children is not None

    def copy(self) -> Inode:
        """A separate inode with the same metadata (not for directories)."""
        if self.children is not None:
            raise AssertionError("internal error: directories are never copied")
        return Inode(self.type, mode=self.mode, uid=self.uid, gid=self.gid,
                     mtime_ns=self.mtime_ns, xattrs=self.xattrs, size=self.size,
                     content=self.content, target=self.target, rdev=self.rdev)

    # Upper-set bookkeeping: names of this directory the current layer touched.
    def mark_upper(self, name: str, layer: int) -> None:
        if self.upper_layer != layer:
            self.upper_layer = layer
            self.upper_names = set()
        self.upper_names.add(name)

    def is_upper(self, name: str, layer: int) -> bool:
        return self.upper_layer == layer and name in self.upper_names


def new_directory(mode: int = 0o755) -> Inode:
    """A directory a layer needed but did not declare: root-owned, 0755, epoch mtime."""
    return Inode(FileType.DIRECTORY, mode=mode)


class Tree:
    """A whole image filesystem in memory."""

    __slots__ = ("root",)

    def __init__(self) -> None:
        self.root = new_directory()

    def resolve_dir(self, parts: Sequence[str], *, create: bool
                    ) -> tuple[list[Inode], list[str]] | None:
        """Resolve ``parts`` as a directory inside the tree, following every symlink.

        Returns the directories walked (root first, the target last) and the
        names leading to the target, ``..`` already applied, so that
        ``dirs[i].children[names[i]] is dirs[i + 1]``. Missing components are
        created as plain directories when ``create`` is set; otherwise the
        result is None. Below a missing component ``..`` is applied lexically
        (as filepath-securejoin does), so ``missing/../x`` creates nothing
        but ``x``. Raises SymlinkLoop or NotADirectoryInTree.
        """
        dirs: list[Inode] = [self.root]
        names: list[str] = []
        missing: list[str] = []  # names below dirs[-1] that do not exist (yet)
        todo = list(reversed(parts))
        follows = 0
        while todo:
            name = todo.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if missing:  # nothing below a missing directory: ".." is lexical there
                    missing.pop()
                elif names:  # ".." at the root stays at the root, as in a chroot
                    names.pop()
                    dirs.pop()
                continue
            here = dirs[-1]
            assert here.children is not None
            child = None if missing else here.children.get(name)
            if child is None:
                missing.append(name)
                continue
            if child.type is FileType.SYMLINK:
                follows += 1
                if follows > MAX_SYMLINK_FOLLOWS:
                    raise SymlinkLoop(f"more than {MAX_SYMLINK_FOLLOWS} symlinks while"
                                      f" resolving {'/'.join(parts)!r}", "/".join(parts))
                target = child.target or ""
                if target.startswith("/"):
                    dirs, names = [self.root], []
                todo.extend(reversed(target.split("/")))
                continue
            if child.children is None:
                where = "/".join([*names, name])
                raise NotADirectoryInTree(f"{where!r} is a {child.type.name.lower()}, not a"
                                          f" directory, while resolving {'/'.join(parts)!r}",
                                          where)
            dirs.append(child)
            names.append(name)
        if missing:
            if not create:
                return None
            for name in missing:
                child = new_directory()
                children = dirs[-1].children
                assert children is not None
                children[name] = child
                child.nlink = 1
                dirs.append(child)
                names.append(name)
        return dirs, names

    def lookup(self, parts: Sequence[str]) -> Inode | None:
        """The inode at ``parts`` without following a symlink in the last component."""
        if not parts:
            return self.root
        found = self.resolve_dir(parts[:-1], create=False)
        if found is None:
            return None
        children = found[0][-1].children
        assert children is not None
        return children.get(parts[-1])

    def walk(self) -> Iterator[tuple[str, Inode]]:
        """Every (path, inode), parents before children, siblings in byte order.

        This is the order ``mkfs.ext4 -d`` visits a directory tree under
        ``LC_ALL=C`` (scandir with alphasort). The root's path is "".
        """
        stack: list[tuple[str, Inode]] = [("", self.root)]
        while stack:
            path, inode = stack.pop()
            yield path, inode
            if inode.children:
                prefix = path + "/" if path else ""
                for name in sorted(inode.children, key=os.fsencode, reverse=True):
                    stack.append((prefix + name, inode.children[name]))


def unlink_subtree(inode: Inode) -> None:
    """Account for an inode (and everything below it) losing its name."""
    stack = [inode]
    while stack:
        node = stack.pop()
        node.nlink -= 1
        if node.children:
            stack.extend(node.children.values())
