"""Everything the native writer takes from the rest of the pipeline, in one place.

The writer's other modules import the pipeline only through this adapter, so
a move of the flat image, the options or the output helpers is a one-file
edit here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import Ext4Error
from pipeline.ext4.build import derive_uuids, plan_for
from pipeline.ext4.builder import NATIVE_WRITER_FORMAT
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.output import CopiedRun, ImageOutput, Sha256Thread
from pipeline.ext4.size import SizePlan, TreeUsage, has_super
from pipeline.ext4.tools import FS_EPOCH
from pipeline.flat.image import ROOTFS_NAME, FileType, FlatEntry
from pipeline.flat.lookup import ContentRef

__all__ = ["Ext4Error", "Ext4Options", "FileType", "FlatEntry", "FS_EPOCH", "ImageOutput",
           "Sha256Thread", "CopiedRun",
           "SizePlan", "TreeUsage", "has_super", "derive_uuids", "plan_for", "staged_content",
           "ContentSource", "ContentRef", "NATIVE_WRITER_FORMAT"]

ContentSource = Callable[[FlatEntry], "ContentRef | None"]
"""Where a regular file's bytes live (a range of a layer store's pack, or a file of
their own), or None when empty."""


def staged_content(flat_dir: Path) -> ContentSource:
    """Content of each regular entry from a flat image's staging tree (a file each), for
    building from a flat image directory."""
    rootfs = os.path.join(flat_dir, ROOTFS_NAME)

    def content(entry: FlatEntry) -> ContentRef | None:
        # Strings, not Paths: pathlib's parsing costs more than the copy of a small file.
        return (os.path.join(rootfs, entry.path), None) if entry.size else None
    return content
