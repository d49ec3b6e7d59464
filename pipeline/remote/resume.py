"""A resumable fetch for ``rootfs-pull``: an interrupted pull keeps its verified chunks.

A published image can be many GiB over a slow link; a pull cut at 90 %
should not start over. Beside the output, ``<out>.part`` is the image being
assembled (created at full size, sparse) and ``<out>.part.json`` the
progress: the artifact's manifest digest and how many leading chunks were
written, verified (compressed and decompressed digests) and fsynced before
the progress file was replaced.

On the next run, with the same artifact (same manifest digest, same size),
those chunks are not downloaded again, but their bytes are read back and
hashed against the chunk's uncompressed digest first: the part file is
never trusted, only what verifies. The first chunk that does not verify,
and everything after it, is cut off (truncate down, then up: holes again)
and fetched. Anything else (another artifact under the tag, no progress
file, a malformed one) starts over. The whole image's sha256 is checked
against the config as always; only then is the part renamed to ``out``
and the progress file removed. A verification failure discards the
chunk being fetched, never the verified ones before it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import structlog

from pipeline.base.files import remove_path, write_atomic
from pipeline.base.jsontext import loads_bounded
from pipeline.errors import RemoteArtifactError
from pipeline.registry.client import RegistryClient
from pipeline.remote.artifact import IO_PIECE_BYTES
from pipeline.remote.fetch import Fetched, chunk_list, fetch_chunk, find_artifact, verified

__all__ = ["pull_resumable", "part_paths"]

log = structlog.get_logger("pipeline.remote")

_FORMAT = 1
# The progress file is three small fields; anything bigger is not ours.
_STATE_MAX_BYTES = 4096


def part_paths(out: Path) -> tuple[Path, Path]:
    """The image being assembled and its progress file, beside ``out``."""
    return out.with_name(out.name + ".part"), out.with_name(out.name + ".part.json")


def _load_done(state: Path, artifact: str, size: int, count: int) -> int:
    """How many leading chunks the progress file claims for this artifact (0 if none)."""
    try:
        with open(state, "rb") as f:
            raw = f.read(_STATE_MAX_BYTES + 1)
        data = loads_bounded(raw) if len(raw) <= _STATE_MAX_BYTES else None
        if (isinstance(data, dict) and data.get("format") == _FORMAT
                and data.get("artifact") == artifact and data.get("size") == size
                and isinstance(data.get("done"), int) and 0 <= data["done"] <= count):
            return int(data["done"])
    except (OSError, ValueError):
        pass
    return 0


def _save_done(state: Path, artifact: str, size: int, done: int) -> None:
    write_atomic(state, json.dumps({"format": _FORMAT, "artifact": artifact, "size": size,
                                    "done": done}).encode())


def _reuse(f: Any, chunks: list[Any], claimed: int) -> tuple[int, Any]:
    """The verified prefix of the claimed chunks, and the whole image's hash over it.

    A chunk's uncompressed digest is the sha256 of its bytes (for the first
    chunk that is also the whole image's state after it), so each is hashed
    on its own and fed to the whole image's hash only once it verified.
    """
    whole = hashlib.sha256()
    for i, (_digest, _packed, offset, raw_size, raw_digest) in enumerate(chunks[:claimed]):
        raw, state = hashlib.sha256(), whole.copy()
        f.seek(offset)
        left = raw_size
        while left:
            data = f.read(min(IO_PIECE_BYTES, left))
            if not data:
                break
            raw.update(data)
            state.update(data)
            left -= len(data)
        if left or raw.hexdigest() != raw_digest.hex:
            return i, whole
        whole = state
    return claimed, whole


def pull_resumable(client: RegistryClient, registry: str, repository: str, reference: str,
                   out: Path) -> tuple[Fetched, int]:
    """Fetch the artifact at ``reference`` into ``out``, resuming an interrupted pull.

    Returns what was written and how many chunks were reused from a previous run.
    """
    where = f"{registry}/{repository}:{reference}"
    found = find_artifact(client, registry, repository, reference)
    config = found.config
    size = config["size"]
    chunks = chunk_list(where, found.manifest, size)
    part, state = part_paths(out)
    artifact = str(found.digest)
    claimed = _load_done(state, artifact, size, len(chunks)) if part.exists() else 0
    with open(part, "r+b" if claimed else "wb") as f:
        reused, whole = _reuse(f, chunks, claimed)
        # Everything past the verified prefix is unknown bytes: cut it, holes again.
        f.truncate(chunks[reused][2] if reused < len(chunks) else size)
        f.truncate(size)
        _save_done(state, artifact, size, reused)
        if reused:
            log.info("pull.resumed", artifact=artifact, chunks=reused, of=len(chunks))
        for i in range(reused, len(chunks)):
            digest, packed_size, offset, raw_size, raw_digest = chunks[i]
            fetch_chunk(client, registry, repository, where, f, whole, digest,
                         packed_size, offset, raw_size, raw_digest)
            f.flush()
            os.fsync(f.fileno())
            _save_done(state, artifact, size, i + 1)
    try:
        fetched = verified(where, found, whole)
    except RemoteArtifactError:
        # Every chunk verified, the whole does not: nothing here is worth keeping.
        remove_path(part)
        remove_path(state)
        raise
    os.replace(part, out)
    remove_path(state)
    return fetched, reused
