"""A flat image's file contents: where each regular file's bytes are, and small files
(/etc/passwd, /etc/group) read by their image path.

Every regular entry of ``entries.jsonl`` names its content by the position
of a layer in the flat image's chain and where its bytes start in that
layer's pack; ``content_files`` turns that into the pack's path and the
offset (what the native ext4 builder copies from). The runtime config resolves a user name
through the image's own account files (``oci.runtime.resolve_user``); they
are read here the same way, from the layer stores.

What it refuses to trust: the image. A path is read only if
``entries.jsonl`` says it and every parent are what they must be (regular
file under directories): an image whose ``/etc/passwd`` is a symlink (to
``/etc/shadow``, or out of the tree) is not followed, the lookup says
"absent". A content reference is checked against the chain before it
becomes a path, the pack is opened with ``O_NOFOLLOW`` and read under a cap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from pipeline.flat.image import (
    ENTRIES_NAME,
    HEADER_NAME,
    FileType,
    FlatEntry,
    read_entries,
    read_header,
)
from pipeline.layers.store import PACK_NAME, LayerStore

__all__ = ["read_flat_files", "content_files", "ContentRef", "FLAT_FILE_MAX_BYTES"]

# An /etc/passwd of ten thousand accounts is well under this.
FLAT_FILE_MAX_BYTES = 4 << 20


ContentRef = tuple[str, "int | None"]
"""Where a regular file's bytes are: (a layer's pack, the offset they start at), or
(a file that holds exactly them, None)."""


def content_files(layers_root: Path, chain: Sequence[str]
                  ) -> Callable[[FlatEntry], ContentRef | None]:
    """The pack and offset of each regular entry's bytes (None for an empty file), for a
    flat image of ``chain``; a reference outside the chain is an internal error."""
    packs = [os.path.join(LayerStore.path_for(layers_root, digest), PACK_NAME)
             for digest in chain]

    def content(entry: FlatEntry) -> ContentRef | None:
        if entry.content is None:
            if entry.size:
                raise AssertionError(f"internal error: {entry.path!r} has no content")
            return None
        layer, offset = entry.content
        if not 0 <= layer < len(packs) or offset < 0:
            raise AssertionError(f"internal error: {entry.path!r} names content {layer}/"
                                 f"{offset} outside its chain of {len(packs)} layers")
        # Strings, not Paths: pathlib's parsing costs more than the copy of a small file.
        return packs[layer], offset
    return content


def read_flat_files(flat_dir: Path, paths: Sequence[str],
                    layers_root: Path) -> dict[str, bytes | None]:
    """The contents of ``paths`` (``etc/passwd``...) in the flat image, read from the layer
    stores under ``layers_root``; None where absent, not a regular file, behind a
    symlink, or larger than the cap."""
    wanted: set[str] = set()
    for path in paths:
        parts = path.split("/")
        wanted.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))
    found_entries: dict[str, FlatEntry] = {}
    for each in read_entries(flat_dir / ENTRIES_NAME):
        if each.path in wanted:
            found_entries[each.path] = each
    content = content_files(layers_root, read_header(flat_dir / HEADER_NAME).chain)
    found: dict[str, bytes | None] = {}
    for path in paths:
        parts = path.split("/")
        parents = (found_entries.get("/".join(parts[:i])) for i in range(1, len(parts)))
        parents_ok = all(p is not None and p.type is FileType.DIRECTORY for p in parents)
        entry = found_entries.get(path)
        if not parents_ok or entry is None or entry.type is not FileType.REGULAR \
                or entry.size > FLAT_FILE_MAX_BYTES:
            found[path] = None
            continue
        source = content(entry)
        found[path] = b"" if source is None else _read(source, entry.size)
    return found


def _read(source: ContentRef, size: int) -> bytes | None:
    path, offset = source
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        data = os.pread(fd, min(size, FLAT_FILE_MAX_BYTES), offset or 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) == size else None
