"""Which builder writes an image's ext4, and what besides the tree and the options decides
the bytes each one writes.

Light on purpose: the mkfs task's key is computed on every run that builds the
task graph, so this imports neither builder.

- ``native`` (the default): ``ext4.native.write_ext4`` writes the image from
  the flat entries and the layer stores' files. No e2fsprogs tool runs, so
  their versions decide nothing; the writer's format version does
  (``NATIVE_WRITER_FORMAT``, re-exported as ``ext4.native.WRITER_FORMAT_VERSION``).
- ``mkfs``: ``mkfs.ext4 -d`` on the staging tree, one ``debugfs`` fixup pass
  (and for derived builds resize2fs and tune2fs): the e2fsprogs versions decide
  the bytes (1.47.3 moved directory entries), so they are part of the key.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["BUILDERS", "DEFAULT_BUILDER", "NATIVE_WRITER_FORMAT", "bytes_decided_by"]

BUILDERS = ("native", "mkfs")
DEFAULT_BUILDER = "native"
NATIVE_WRITER_FORMAT = 1
"""Bump whenever the native writer could give different bytes for the same input."""


def bytes_decided_by(builder: str, tools: Mapping[str, str]) -> dict[str, object]:
    """What beyond the tree, the options and the seed decides an image's bytes: the
    native writer's format version, or the e2fsprogs versions for the mkfs builder."""
    if builder == "native":
        return {"native_writer_format": NATIVE_WRITER_FORMAT}
    if builder == "mkfs":
        return {"tools": dict(tools)}
    raise AssertionError(f"internal error: unknown builder {builder!r}")
