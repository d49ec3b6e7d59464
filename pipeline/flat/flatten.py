"""Apply layer indexes, oldest first, to an in-memory tree (image-spec layer.md).

The rules, each from the spec or, where the spec is silent, from umoci's
oci/layer (the careful reference implementation):

- Whiteouts (``.wh.name``) and opaque markers (``.wh..wh..opq``) remove only
  entries of lower layers: a name the current layer wrote, or passed through
  on the way to something it wrote, survives whatever the archive order
  ("Whiteouts": "Files that are present in the same layer as a whiteout file
  can only be hidden by whiteout files in subsequent layers"). A whiteout of a
  path that does not exist is a no-op.
- Parents a layer does not declare are created as 0755 root-owned
  directories. A directory over a directory merges (the new metadata wins,
  the children stay); any other collision replaces the old entry with a new
  inode (other hard-link names keep the old one). The last duplicate wins.
- Every parent path is resolved inside the tree, following symlinks as a
  chroot would (:mod:`.tree`); the last component is never followed, so an
  entry replaces a symlink rather than writing through it.
- A hard link names an entry already in the tree (an earlier layer, or
  earlier in this layer) and shares its inode; a missing, whited-out or
  directory target is an error. A hard link to a symlink, device or fifo gets
  a copy of that inode instead (the flat image format shares inodes only
  between regular files).
- The root stays a directory: an entry that would change its type is refused.

Refuses to trust: any entry's claim about the tree (targets must exist,
parents must be directories); everything is checked against the tree itself.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog

from pipeline.errors import BadHardLink, ParentNotDirectory, RootTypeChange, TooManySymlinks
from pipeline.flat.image import FileType
from pipeline.flat.tree import Inode, NotADirectoryInTree, SymlinkLoop, Tree, unlink_subtree
from pipeline.layers.store import EntryKind, IndexEntry, LayerStore

__all__ = ["flatten", "apply_layer"]

log = structlog.get_logger(__name__)

_TYPES = {EntryKind.REGULAR: FileType.REGULAR, EntryKind.DIRECTORY: FileType.DIRECTORY,
          EntryKind.SYMLINK: FileType.SYMLINK, EntryKind.CHAR: FileType.CHAR,
          EntryKind.BLOCK: FileType.BLOCK, EntryKind.FIFO: FileType.FIFO}


def flatten(stores: Sequence[LayerStore]) -> Tree:
    """The image tree of ``stores`` applied in order (oldest layer first)."""
    started = time.monotonic()
    tree = Tree()
    for number, store in enumerate(stores):
        apply_layer(tree, store, number)
    log.debug("flat.flattened", layers=len(stores), seconds=round(time.monotonic() - started, 3))
    return tree


def apply_layer(tree: Tree, store: LayerStore, number: int) -> None:
    """Apply one layer's index; ``number`` must differ for every layer applied."""
    _Applier(tree, store, number).run()


class _Applier:
    __slots__ = ("tree", "store", "layer")

    def __init__(self, tree: Tree, store: LayerStore, number: int) -> None:
        self.tree = tree
        self.store = store
        self.layer = number

    def run(self) -> None:
        for entry in self.store.entries():
            parts = entry.path.split("/") if entry.path else []
            try:
                if entry.kind is EntryKind.WHITEOUT:
                    self._whiteout(parts)
                elif entry.kind is EntryKind.OPAQUE:
                    self._opaque(parts)
                elif not parts:
                    self._root(entry)
                else:
                    self._add(parts, entry)
            except SymlinkLoop as e:
                raise TooManySymlinks(self.store.digest, f"{e} (a symlink loop)",
                                      member=entry.path) from None
            except NotADirectoryInTree as e:
                raise ParentNotDirectory(self.store.digest, f"cannot place this entry: {e};"
                                         " the layer conflicts with the layers below it",
                                         member=entry.path) from None

    def _root(self, entry: IndexEntry) -> None:
        if entry.kind is not EntryKind.DIRECTORY:
            raise RootTypeChange(self.store.digest, "refusing to change the type of the root"
                                 f" directory (entry kind {entry.kind.name.lower()})",
                                 member=entry.path or "/")
        _set_metadata(self.tree.root, entry)

    def _add(self, parts: list[str], entry: IndexEntry) -> None:
        linked = self._link_target(entry) if entry.kind is EntryKind.HARDLINK else None
        found = self.tree.resolve_dir(parts[:-1], create=True)
        assert found is not None
        dirs, names = found
        parent, name = dirs[-1], parts[-1]
        assert parent.children is not None
        existing = parent.children.get(name)
        if linked is not None:
            node = linked if linked.type is FileType.REGULAR else linked.copy()
        elif entry.kind is EntryKind.DIRECTORY and existing is not None and existing.is_dir:
            node = existing
            _set_metadata(node, entry)
        else:
            node = _new_inode(entry, self.store)
        if node is not existing:
            if existing is not None:
                unlink_subtree(existing)
            parent.children[name] = node
            node.nlink += 1
        parent.mark_upper(name, self.layer)
        # Ancestors: walk up until one is already marked (then all above it are).
        for i in range(len(names) - 1, -1, -1):
            if dirs[i].is_upper(names[i], self.layer):
                break
            dirs[i].mark_upper(names[i], self.layer)

    def _link_target(self, entry: IndexEntry) -> Inode:
        target = entry.link or ""
        parts = target.split("/") if target else []
        try:
            node = self.tree.lookup(parts)
        except NotADirectoryInTree:
            node = None
        if node is None:
            raise BadHardLink(self.store.digest, f"hard link target {target!r} is not in the"
                              " tree (missing, removed by a whiteout, or only in a later"
                              " entry)", member=entry.path)
        if node.is_dir:
            raise BadHardLink(self.store.digest, f"hard link target {target!r} is a directory",
                              member=entry.path)
        return node

    def _whiteout(self, parts: list[str]) -> None:
        try:
            found = self.tree.resolve_dir(parts[:-1], create=False)
        except NotADirectoryInTree:
            return  # nothing below a file to remove
        if found is None:
            return
        parent = found[0][-1]
        assert parent.children is not None
        if parts[-1] in parent.children:
            self._remove_lower([(parent, parts[-1])])

    def _opaque(self, parts: list[str]) -> None:
        try:
            found = self.tree.resolve_dir(parts, create=False)
        except NotADirectoryInTree:
            return
        if found is None:
            return
        directory = found[0][-1]
        assert directory.children is not None
        self._remove_lower([(directory, name) for name in directory.children])

    def _remove_lower(self, todo: list[tuple[Inode, str]]) -> None:
        """Remove each (dir, name) unless this layer touched it; then look inside."""
        while todo:
            directory, name = todo.pop()
            assert directory.children is not None
            node = directory.children[name]
            if directory.is_upper(name, self.layer):
                if node.children:
                    todo.extend((node, child) for child in node.children)
                continue
            del directory.children[name]
            unlink_subtree(node)


def _set_metadata(node: Inode, entry: IndexEntry) -> None:
    node.mode = entry.mode
    node.uid = entry.uid
    node.gid = entry.gid
    node.mtime_ns = entry.mtime_ns
    node.xattrs = entry.xattrs


def _new_inode(entry: IndexEntry, store: LayerStore) -> Inode:
    return Inode(_TYPES[entry.kind], mode=entry.mode, uid=entry.uid, gid=entry.gid,
                 mtime_ns=entry.mtime_ns, xattrs=entry.xattrs, size=entry.size,
                 content=(store, entry.content) if entry.content is not None else None,
                 target=entry.link if entry.kind is EntryKind.SYMLINK else None,
                 rdev=entry.rdev)

