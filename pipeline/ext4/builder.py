"""Which builder writes an image's ext4, what besides the tree and the options decides
the bytes each one writes, and ``build_image``, the dispatch to it.

Light on purpose: the mkfs task's key is computed on every run that builds the
task graph, so this imports neither builder (``build_image`` imports the one it
calls).

- ``native`` (the default): ``ext4.native.write_ext4`` writes the image from
  the flat entries and the layer stores' files. No e2fsprogs tool runs, so
  their versions decide nothing; the writer's format version does
  (``NATIVE_WRITER_FORMAT``, re-exported as ``ext4.native.WRITER_FORMAT_VERSION``).
- ``mkfs``: ``mkfs.ext4 -d`` on the staging tree, one ``debugfs`` fixup pass
  and ``e2fsck``: the e2fsprogs versions decide the bytes (1.47.3 moved
  directory entries), so they are part of the key.

Both always build the image in full. Derived builds (an mkfs image grown from
the cached ext4 of its lower layers) were removed: a full native tag bump
takes as long as a derived mkfs one did (1.31 s against 1.28 s, bench scenario
4, docs/benchmarks.md), so they no longer paid for their code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the builders load only when an image is built
    from pipeline.ext4.build import Ext4Result
    from pipeline.ext4.options import Ext4Options

__all__ = ["BUILDERS", "DEFAULT_BUILDER", "NATIVE_WRITER_FORMAT", "bytes_decided_by",
           "build_image"]

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


def build_image(flat_dir: Path, layers_root: Path, output: Path, options: Ext4Options, *,
                seed: str) -> Ext4Result:
    """Build ``output`` in full from the flat image ``flat_dir`` with the image's builder:
    the native writer from the layer stores under ``layers_root``
    (``ext4.nativebuild``), or ``mkfs.ext4 -d`` on the staging tree (``ext4.build``)."""
    if options.builder == "native":
        from pipeline.ext4.nativebuild import build_native

        return build_native(flat_dir, layers_root, output, options, seed=seed)
    if options.builder == "mkfs":
        from pipeline.ext4.build import build_ext4

        return build_ext4(flat_dir, output, options, seed=seed)
    raise AssertionError(f"internal error: unknown builder {options.builder!r}")
