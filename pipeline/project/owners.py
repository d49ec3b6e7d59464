"""Which images last used which cache entries, so that gc can say whose entries it removes.

An entry no lock names anymore (a tag bumped, an image removed) has no owner
in any lock; ``gc --dry-run`` would have to list it under "no image". So
whenever an image's roots leave a lock (resolve replaces its entry, prune
drops it, a registered manifest disappears), they are appended here first::

    <cache>/owners.jsonl   one JSON object per line:
        {"manifest": "/abs/images.toml", "image": "a",
         "entries": ["blobs/sha256/<hex>", "layers/<hex>", "flat/<chain key>", ...]}

Entries are paths relative to the cache root, as gc names them. Appending
costs one short write per replaced lock entry, whatever the file's size;
the file is compacted (rewritten atomically, owners merged per entry, the
entries gc removed dropped) after every real gc and whenever it passes
``COMPACT_BYTES``, so it stays bounded by what the cache holds.

It only ever labels: what gc keeps comes from the locks, never from here.
Anyone who can write the cache can write this file, so it is read under a
size cap, line by line, and a line that is not what we write is skipped
(a crash mid-append leaves at most one such line).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import structlog

from pipeline.base.files import write_atomic
from pipeline.base.jsontext import loads_bounded
from pipeline.flat.image import chain_key
from pipeline.layers.configfile import config_layer_key
from pipeline.oci.resolved import ResolvedImage
from pipeline.project.cache import BLOBS, FLAT, LAYERS

__all__ = ["OWNERS", "Owner", "entries_used", "record_owners", "read_owners",
           "compact_owners", "MAX_OWNERS_PER_ENTRY"]

log = structlog.get_logger(__name__)

OWNERS = "owners.jsonl"
Owner = tuple[str, str]
"""(absolute manifest path, image name)."""
# An entry shared by many images names its most recent users: enough to say
# whose it was, and bounded when a base layer is used by thousands.
MAX_OWNERS_PER_ENTRY = 8
# Past this the log is compacted on the next append; gc compacts it anyway.
COMPACT_BYTES = 8 << 20
# Never read more than this: a bigger file is not ours (and only labels are lost).
READ_MAX_BYTES = 64 << 20
_MAX_LINE_ENTRIES = 100_000


def _path(cache_root: Path) -> Path:
    return cache_root / OWNERS


def entries_used(resolved: ResolvedImage, config_path: str | None = None) -> list[str]:
    """The cache entries an image of this lock entry uses, as gc names them: its blobs,
    layer stores, and the flat image of its chain (and, with ``config_path``, of its
    chain with the config file's layer store on top)."""
    blobs = [resolved.config.digest, *(layer.digest for layer in resolved.layers)]
    found = [f"{BLOBS}/{d.algorithm}/{d.hex}" for d in blobs]
    found += [f"{LAYERS}/{layer.digest.hex}" for layer in resolved.layers]
    chain = [str(layer.digest) for layer in resolved.layers]
    found.append(f"{FLAT}/{chain_key(chain)}")
    if config_path is not None:
        extra = config_layer_key(resolved.config.digest, chain, config_path)
        found += [f"{LAYERS}/{extra.hex}", f"{FLAT}/{chain_key([*chain, str(extra)])}"]
    return found


def record_owners(cache_root: Path, uses: Mapping[Owner, Iterable[str]]) -> None:
    """Append that each (manifest, image) of ``uses`` used these entries."""
    lines = [json.dumps({"manifest": manifest, "image": image, "entries": sorted(set(entries))},
                        sort_keys=True, ensure_ascii=True) + "\n"
             for (manifest, image), entries in sorted(uses.items()) if entries]
    if not lines:
        return
    path = _path(cache_root)
    with open(path, "ab") as f:
        # A crash mid-append leaves a line without its newline: end it, so the
        # next record is not glued to it.
        if f.tell() > 0:
            with open(path, "rb") as r:
                r.seek(-1, os.SEEK_END)
                if r.read(1) != b"\n":
                    f.write(b"\n")
        f.write("".join(lines).encode("ascii"))
        size = f.tell()
    if size > COMPACT_BYTES:
        compact_owners(cache_root)


def _records(cache_root: Path) -> Iterable[tuple[Owner, list[str]]]:
    try:
        with open(_path(cache_root), "rb") as f:
            raw = f.read(READ_MAX_BYTES + 1)
    except FileNotFoundError:
        return
    if len(raw) > READ_MAX_BYTES:
        log.warning("cache.owners_unreadable", path=str(_path(cache_root)),
                    reason=f"larger than {READ_MAX_BYTES} bytes; entries are listed unowned")
        return
    for line in raw.splitlines():
        try:
            data = loads_bounded(line)
        except ValueError:
            continue  # a torn append
        if not isinstance(data, dict):
            continue
        manifest, image, entries = data.get("manifest"), data.get("image"), data.get("entries")
        if (isinstance(manifest, str) and isinstance(image, str) and isinstance(entries, list)
                and len(entries) <= _MAX_LINE_ENTRIES):
            yield (manifest, image), [e for e in entries if isinstance(e, str)]


def read_owners(cache_root: Path) -> dict[str, list[Owner]]:
    """For each recorded entry, its last users, most recent last."""
    owners: dict[str, list[Owner]] = {}
    for owner, entries in _records(cache_root):
        for entry in entries:
            users = owners.setdefault(entry, [])
            if owner in users:
                users.remove(owner)
            users.append(owner)
            del users[:-MAX_OWNERS_PER_ENTRY]
    return owners


def compact_owners(cache_root: Path, *, removed: Iterable[str] = ()) -> None:
    """Rewrite the log: one line per owner, without ``removed`` and entries gone from disk."""
    gone = set(removed)
    by_owner: dict[Owner, list[str]] = {}
    for entry, users in read_owners(cache_root).items():
        if entry in gone or not os.path.lexists(cache_root / entry):
            continue
        for owner in users:
            by_owner.setdefault(owner, []).append(entry)
    path = _path(cache_root)
    if not by_owner:
        path.unlink(missing_ok=True)
        return
    text = "".join(json.dumps({"manifest": m, "image": i, "entries": sorted(e)},
                              sort_keys=True, ensure_ascii=True) + "\n"
                   for (m, i), e in sorted(by_owner.items()))
    write_atomic(path, text.encode("ascii"))
