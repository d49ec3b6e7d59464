"""Manifests sharing one cache directory, so that gc keeps what any of them uses.

Several projects (or several manifests of one project) may point
``cache_dir`` at the same directory. ``gc`` run from one of them must not
delete what the others use; it cannot know them unless they say so. Every
manifest that builds in a cache registers itself there::

    <cache>/manifests/<sha256 of the manifest's absolute path, 16 hex>.json
        {"manifest": "/abs/path/images.toml"}

The lock beside that manifest names its roots (``lockfile.lock_path_for``).
gc keeps every registered manifest's entries while the manifest exists, and
drops the registration of one that is gone (what its lock, if still there,
used is recorded as that manifest's in ``owners``, for gc's listing). A registration is written once
(a no-op run only checks that its file exists).

A registration is a path from the cache directory, which anyone who can
write the cache can write: it is read under a size cap, must be a JSON
object naming an absolute path, and only ever makes gc keep more.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import structlog

from pipeline.base.files import write_atomic
from pipeline.base.jsontext import loads_bounded
from pipeline.errors import PipelineError
from pipeline.project.config import lock_path_for
from pipeline.project.lockfile import read_lock
from pipeline.project.owners import entries_used, record_owners

__all__ = ["MANIFESTS", "register_manifest", "registered_manifests", "registration_path"]

log = structlog.get_logger(__name__)

MANIFESTS = "manifests"
# A registration holds one path: a few hundred bytes; more is not ours.
REGISTRATION_MAX_BYTES = 64 * 1024
_KEY_HEX = 16


def registration_path(cache_root: Path, manifest: Path) -> Path:
    key = hashlib.sha256(str(manifest.resolve()).encode("utf-8", "surrogateescape")).hexdigest()
    return cache_root / MANIFESTS / f"{key[:_KEY_HEX]}.json"


def register_manifest(cache_root: Path, manifest: Path) -> bool:
    """Register ``manifest`` as a user of the cache; True when it was not yet."""
    path = registration_path(cache_root, manifest)
    if path.is_file():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"manifest": str(manifest.resolve())}, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"))
    log.debug("cache.registered", manifest=str(manifest.resolve()), cache=str(cache_root))
    return True


def registered_manifests(cache_root: Path) -> list[Path]:
    """Every registered manifest that still exists; registrations of gone ones are removed."""
    found: list[Path] = []
    directory = cache_root / MANIFESTS
    try:
        entries = sorted(directory.iterdir())
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.suffix != ".json" or not entry.is_file():
            continue
        try:
            with open(entry, "rb") as f:
                data = loads_bounded(f.read(REGISTRATION_MAX_BYTES + 1)
                                     [:REGISTRATION_MAX_BYTES])
            manifest = Path(data["manifest"]) if isinstance(data, dict) else None
        except (OSError, ValueError, KeyError, TypeError):
            manifest = None
        if manifest is None or not manifest.is_absolute():
            log.warning("cache.registration_unreadable", path=str(entry))
            continue
        if manifest.is_file():
            found.append(manifest)
        else:
            _remember_lock(cache_root, manifest)
            entry.unlink(missing_ok=True)
            log.info("cache.unregistered", manifest=str(manifest), reason="manifest is gone")
    return found


def _remember_lock(cache_root: Path, manifest: Path) -> None:
    """A gone manifest's lock, if it is still there, says whose its entries were."""
    try:
        entries = read_lock(lock_path_for(manifest))
    except PipelineError:
        return
    record_owners(cache_root, {(str(manifest), name): entries_used(entry.resolved)
                               for name, entry in entries.items()})
