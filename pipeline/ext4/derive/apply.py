"""The debugfs side of a derived build: the script that applies a diff, the listings that
prove it, and the link counts.

``apply_script`` turns a :class:`~.ext4diff.TreeDiff` into one ``debugfs -w``
script, in four passes:

0. release the external xattr blocks of the base inodes that go: ``kill_file``
   (like ``rm``) leaves them allocated, ``freeb`` clears only their bitmap
   bits, so the group and superblock free counts are set beside it
   (``_free_xattr_blocks``);
1. unlink every removed name from the directory C keeps it in
   (``cd <dir>``, ``unlink "name"``: a name, never a path, so a file called
   ``<12>`` is never read as an inode number);
2. free every base inode nothing keeps: ``links_count`` 0 first (e2fsck
   reads an inode with links as in use whatever its dtime), then
   ``kill_file`` (data, extent and directory blocks, the inode);
3. create C's new names in C's order, parents first: ``mkdir``; ``write``
   from C's staging file (regular files, and the empty placeholders devices
   start as, exactly as in a full build); ``symlink``; ``mknod p``; ``link``
   for further hard-link names (to ``<ino>`` of a kept inode, or to the
   absolute path of the group's first new name). New directories are
   entered with ``cd "./name"`` from their parent.

A name debugfs cannot address (NUL, CR, LF) or a line it would split raises
DeriveRefused, so such an image is built in full instead.

``expected_listings`` says what ``ls -p`` must print for every directory
whose entries changed, with the diff's predicted inode numbers: checking
them all in one debugfs run proves the new part of the map as
``ext4.inodes`` proves a full build's. ``link_count_fixups`` sets every
inode's ``links_count`` to what C declares (``link`` and ``kill_file``
leave them to the caller).
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.errors import Ext4Error
from pipeline.ext4 import inodes
from pipeline.ext4.debugfs import MAX_LINE_BYTES, Script, quote
from pipeline.ext4.derive.diff import DeriveRefused, TreeDiff
from pipeline.ext4.derive.grow import FreeBlocks
from pipeline.ext4.disk import ROOT_INO
from pipeline.ext4.inodes import LOST_FOUND, InodeMap, basename
from pipeline.ext4.readback import InodeFields
from pipeline.ext4.size import BLOCKS_PER_GROUP
from pipeline.flat.image import ROOTFS_NAME, FileType, FlatEntry

__all__ = ["apply_script", "expected_listings", "link_count_fixups", "MAX_LINKS"]

# Past this many names an inode's (or subdirectories a directory's) links_count
# stops counting (EXT4_LINK_MAX; dir_nlink then stores 1): not modelled here.
MAX_LINKS = 65000


class _Writer:
    def __init__(self, diff: TreeDiff, flat_c: Path) -> None:
        self.script = Script()
        self.diff = diff
        self.staging = os.fsencode(flat_c / ROOTFS_NAME)
        self.cwd: str | None = None

    def quoted(self, raw: bytes, what: str) -> bytes:
        try:
            arg = quote(raw, what=what)
        except Ext4Error as err:
            raise DeriveRefused(str(err)) from err
        if len(arg) > MAX_LINE_BYTES // 3:     # a line holds at most two such arguments
            raise DeriveRefused(f"{what} {os.fsdecode(raw)[:80]!r}... is too long for one "
                                f"debugfs script line")
        return arg

    def cd(self, path: str) -> None:
        if path == self.cwd:
            return
        if path in self.diff.kept:
            self.script.command("cd", f"<{self.diff.inodes[path]}>")
        else:                                  # made earlier in this script: enter it by name
            self.cd(path.rpartition("/")[0])
            self.script.command("cd", self.quoted(b"./" + basename(path), "directory name"))
        self.cwd = path

    def create(self, entry: FlatEntry, link_to: int | str | None) -> None:
        self.cd(entry.path.rpartition("/")[0])
        name = self.quoted(basename(entry.path), "name")
        command = self.script.command
        if isinstance(link_to, int):
            command("link", f"<{link_to}>", name)
        elif link_to is not None:
            command("link", self.quoted(b"/" + os.fsencode(link_to), "path"), name)
        elif entry.type is FileType.DIRECTORY:
            command("mkdir", name)
        elif entry.type is FileType.SYMLINK:
            if not entry.target:
                raise DeriveRefused(f"symlink {entry.path!r} has an empty target")
            command("symlink", name, self.quoted(os.fsencode(entry.target), "symlink target"))
        elif entry.type is FileType.FIFO:
            command("mknod", name, "p")
        else:                                  # regular files and device placeholders
            source = self.staging + b"/" + os.fsencode(entry.path)
            command("write", self.quoted(source, "staged file"), name)


def _free_xattr_blocks(script: Script, blocks: Sequence[int], free: FreeBlocks) -> None:
    """Release external xattr blocks that ``kill_file`` left allocated.

    ``freeb`` clears only the bitmap bit, and in 1.47.0 removing an inode's
    last xattr (``ea_rm``) keeps its block: so the group and superblock free
    counts are set here too, from ``free`` (read before the script runs; these
    lines come first in it, so nothing has changed the counts yet).
    """
    if not blocks:
        return
    per_group: dict[int, int] = defaultdict(int)
    for block in blocks:
        script.command("freeb", block)
        per_group[block // BLOCKS_PER_GROUP] += 1
    for group, count in sorted(per_group.items()):
        script.command("set_bg", group, "free_blocks_count", free.groups[group] + count)
    script.command("ssv", "free_blocks_count", free.total + len(blocks))


def apply_script(diff: TreeDiff, flat_c: Path, freed: Mapping[int, InodeFields],
                 free: FreeBlocks) -> Script:
    """The one debugfs script that turns a copy of the base into C's tree (see the module
    docstring); ``freed`` holds what the base's inodes in ``diff.frees`` hold now and
    ``free`` the free block counts of the copy."""
    writer = _Writer(diff, flat_c)
    command = writer.script.command
    # First, while the counts in ``free`` are still the image's.
    _free_xattr_blocks(writer.script, [freed[n].xattr_block for n in diff.frees
                                       if freed[n].xattr_block], free)
    current = None
    for directory, path in diff.unlinks:
        if directory != current:
            command("cd", f"<{directory}>")
            current = directory
        command("unlink", writer.quoted(basename(path), "name"))
    for number in diff.frees:
        writer.script.sif(number, "links_count", 0)
        command("kill_file", f"<{number}>")
    for creation in diff.creations:
        writer.create(creation.entry, creation.link_to)
    return writer.script


def expected_listings(diff: TreeDiff, entries: Sequence[FlatEntry]
                      ) -> dict[int, frozenset[tuple[bytes, bytes, bytes, bytes]]]:
    """Every record ``ls -p`` must print, after the apply script, for each directory in
    ``diff.changed``: the form ``inodes.listing_error`` compares. Kept device
    inodes are real nodes already (the base's fixup made them); new ones are still
    their placeholder files until this build's fixup."""
    return inodes.expected_listings(entries, diff.inodes, only=diff.changed,
                                        real_devices=diff.kept)


def declared_links(entries: Sequence[FlatEntry], inodes: InodeMap) -> dict[int, int]:
    """links_count of every inode of the tree: its names, or for a directory 2 plus its
    subdirectories (mke2fs's own lost+found included)."""
    links: dict[int, int] = defaultdict(int)
    has_lost_found = False
    for entry in entries:
        number = inodes[entry.path]
        if entry.type is FileType.DIRECTORY:
            links[number] += 2
            if entry.path:
                links[inodes[entry.path.rpartition("/")[0]]] += 1
            has_lost_found |= entry.path == LOST_FOUND
        else:
            links[number] += 1
    if not has_lost_found:
        links[ROOT_INO] += 1
    return links


def link_count_fixups(script: Script, links: Mapping[int, int],
                      current: Mapping[int, InodeFields]) -> None:
    """Append a ``links_count`` write for every inode whose count is not ``links``'s."""
    for number, want in links.items():
        if current[number].links != want:
            script.sif(number, "links_count", want)
