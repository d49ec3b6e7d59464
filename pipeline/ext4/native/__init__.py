"""The native ext4 writer: an image written straight from flat entries and their bytes,
without mkfs.ext4, debugfs, a staging tree or root. See docs/ext4-writer.md.

Public: ``write_ext4`` (publish atomically at a path), ``write_image`` (into an
open file), ``NativeResult``, ``WRITER_FORMAT_VERSION`` (part of the build key),
``staged_content`` (content from a flat image's staging tree), and the
refusals in ``errors``.
"""

from __future__ import annotations

from pipeline.ext4.native.errors import (
    BadDevice,
    BadTree,
    BadXattr,
    NameTooLong,
    SymlinkTooLong,
    UnrepresentableEntry,
    XattrTooLarge,
)
from pipeline.ext4.native.inputs import ContentSource, staged_content
from pipeline.ext4.native.writer import (
    WRITER_FORMAT_VERSION,
    NativeResult,
    write_ext4,
    write_image,
)

__all__ = ["write_ext4", "write_image", "NativeResult", "WRITER_FORMAT_VERSION",
           "ContentSource", "staged_content", "UnrepresentableEntry", "NameTooLong",
           "SymlinkTooLong", "BadXattr", "XattrTooLarge", "BadDevice", "BadTree"]
