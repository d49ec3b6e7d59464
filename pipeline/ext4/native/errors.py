"""What the native writer refuses: trees ext4 cannot hold as declared.

Hierarchy (all ``pipeline.errors.Ext4Error``)::

    Ext4Error
    └── UnrepresentableEntry   an entry ext4 cannot hold (path and what, in the message)
        ├── NameTooLong        a file name over 255 bytes
        ├── SymlinkTooLong     a symlink target over 4095 bytes (or empty, or with NUL)
        ├── BadXattr           an xattr name ext4 has no prefix for, or over 255 bytes
        ├── XattrTooLarge      xattrs that fit neither the inode nor one 4 KiB block
        ├── BadDevice          device numbers past ext4's 12-bit major / 20-bit minor
        └── BadTree            a path twice, no parent directory, content that disagrees

Each message is one sentence: the path, what is wrong with the offending value,
the limit, and what to change.
"""

from __future__ import annotations

from pipeline.ext4.native.inputs import Ext4Error

__all__ = ["UnrepresentableEntry", "NameTooLong", "SymlinkTooLong", "BadXattr",
           "XattrTooLarge", "BadDevice", "BadTree"]


class UnrepresentableEntry(Ext4Error):
    """An entry of the tree that ext4 cannot hold as declared."""

    def __init__(self, path: str, message: str, *, attribute: str | None = None) -> None:
        where = f"{path or '/'!r}"
        if attribute is not None:
            where += f", extended attribute {attribute!r}"
        super().__init__(f"{where}: {message}")
        self.path = path
        self.attribute = attribute


class NameTooLong(UnrepresentableEntry):
    """A file name is longer than a directory entry holds (255 bytes)."""


class SymlinkTooLong(UnrepresentableEntry):
    """A symlink target is longer than 4095 bytes, empty, or holds a NUL byte."""


class BadXattr(UnrepresentableEntry):
    """An xattr name has no ext4 name index, or its suffix is over 255 bytes."""


class XattrTooLarge(UnrepresentableEntry):
    """An inode's xattrs fit neither its body nor one external 4 KiB block."""


class BadDevice(UnrepresentableEntry):
    """Device numbers past what an ext4 inode encodes."""


class BadTree(UnrepresentableEntry):
    """The entries do not form a tree, or a file's content disagrees with its entry."""
