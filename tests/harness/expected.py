"""The tree a stack of well-formed layers should flatten to: a test oracle.

Deliberately simple and independent of ``pipeline.flat.flatten``: paths are
normalised (``./`` and trailing ``/`` dropped), each layer's whiteouts and
opaque markers are applied to the lower layers first (OCI image-spec layer.md,
"Whiteouts": they never hide entries of their own layer), then its entries are
laid over the tree; a non-directory replacing a directory removes the subtree.
Hard links stay ``kind="hardlink"`` members whose ``target`` is normalised.
It trusts its input: hostile layers are the unpacker's business, not this one's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from .tarball import Member

__all__ = ["expected_tree", "normalize"]

WHITEOUT_PREFIX = ".wh."
OPAQUE = ".wh..wh..opq"


def normalize(path: str) -> str:
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts)


def _remove(tree: dict[str, Member], path: str, *, keep_self: bool = False) -> None:
    # The root ("") is the parent of every path: an opaque marker there hides all.
    prefix = path + "/" if path else ""
    for key in [k for k in tree if k.startswith(prefix) or (k == path and not keep_self)]:
        del tree[key]


def expected_tree(layers: Sequence[Iterable[Member]]) -> dict[str, Member]:
    """Flatten layers (oldest first) into {normalised path: final member}."""
    tree: dict[str, Member] = {}
    for layer in layers:
        members = [m for m in layer if m.kind not in ("raw", "bytes")]
        for m in members:
            parent, _, name = normalize(m.path).rpartition("/")
            if name == OPAQUE:
                _remove(tree, parent, keep_self=True)
            elif name.startswith(WHITEOUT_PREFIX):
                _remove(tree, f"{parent}/{name[4:]}" if parent else name[4:])
        for m in members:
            path = normalize(m.path)
            if path.rpartition("/")[2].startswith(WHITEOUT_PREFIX):
                continue
            old = tree.get(path)
            if old is not None and old.kind == "dir" and m.kind != "dir":
                _remove(tree, path)
            if m.kind == "hardlink":
                m = dataclasses.replace(m, target=normalize(m.target))
            tree[path] = dataclasses.replace(m, path=path)
    return tree
