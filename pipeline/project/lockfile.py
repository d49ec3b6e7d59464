"""images.lock.json: what every image reference resolved to.

The lock sits beside the manifest and is meant to be committed: it makes a
build reproducible and lets a run skip the registry round trip for every
image whose reference has not changed. Shape::

    {
      "lockfile_version": 1,
      "images": {
        "<name>": {"ref": "<as written>", "platform": "linux/amd64",
                   "resolved": <ResolvedImage.to_json()>}
      }
    }

An image from a local layout or archive has, in its ``resolved`` object,
``source`` (kind, path as written, identity) instead of ``registry`` and
``repository``.

It is written atomically (temporary file, fsync, rename), only when its
content changes, with sorted keys and a fixed indent so that it diffs well.
Resolve tasks run in parallel threads: every read-modify-write goes through
``update_lock``, which serialises writers of one path in this process (the
run lock in ``runlock.py`` keeps other processes out).

Nothing read from the file is trusted: the shape is checked and every entry
goes through ``ResolvedImage.from_json``, which validates digests; anything
wrong is a LockError naming the file, the image and the fix.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.base.files import write_atomic
from pipeline.base.jsontext import JsonTooDeep, loads_bounded
from pipeline.errors import LockError, PipelineError
from pipeline.oci.resolved import ResolvedImage

__all__ = ["LOCK_VERSION", "LockEntry", "read_lock", "lock_entry", "render_lock",
           "update_lock"]

LOCK_VERSION = 1
# A lock for hundreds of images is well under this; more means a wrong file.
LOCK_MAX_BYTES = 64 << 20

_path_locks: dict[Path, threading.Lock] = {}
_path_locks_guard = threading.Lock()
_cache: dict[Path, tuple[tuple[int, int, int], dict[str, LockEntry]]] = {}


@dataclass(frozen=True, slots=True)
class LockEntry:
    """One image's lock: the reference and platform it was resolved from, and the result."""

    ref: str
    platform: str
    resolved: ResolvedImage

    def matches(self, ref: str, platform: str) -> bool:
        """True when this entry was resolved from exactly this reference and platform."""
        return self.ref == ref and self.platform == platform

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "platform": self.platform, "resolved": self.resolved.to_json()}


def _path_lock(path: Path) -> threading.Lock:
    with _path_locks_guard:
        return _path_locks.setdefault(path, threading.Lock())


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def _parse(path: Path, text: str) -> dict[str, LockEntry]:
    fix = "fix it by hand or delete it and run `doit` to resolve again"
    try:
        data = loads_bounded(text)
    except JsonTooDeep as err:
        raise LockError(f"{path}: {err}; {fix}") from None
    except ValueError as err:
        raise LockError(f"{path}: not valid JSON ({err}); {fix}") from None
    if not isinstance(data, dict) or data.get("lockfile_version") != LOCK_VERSION:
        version = data.get("lockfile_version") if isinstance(data, dict) else None
        raise LockError(f"{path}: lockfile_version is {version!r}, this pipeline reads "
                        f"{LOCK_VERSION}; {fix}")
    images = data.get("images")
    if not isinstance(images, dict):
        raise LockError(f"{path}: `images` must be an object; {fix}")
    entries = {}
    for name, raw in images.items():
        if (not isinstance(raw, dict) or not isinstance(raw.get("ref"), str)
                or not isinstance(raw.get("platform"), str)
                or not isinstance(raw.get("resolved"), dict)):
            raise LockError(f"{path}: image {name!r}: expected an object with string `ref`, "
                            f"string `platform` and object `resolved`; {fix}")
        try:
            resolved = ResolvedImage.from_json(raw["resolved"])
        except (PipelineError, KeyError, TypeError, ValueError) as err:
            raise LockError(f"{path}: image {name!r}: bad `resolved` entry ({err}); "
                            f"{fix}") from None
        entries[name] = LockEntry(ref=raw["ref"], platform=raw["platform"], resolved=resolved)
    return entries


def read_lock(path: Path) -> dict[str, LockEntry]:
    """The entries of the lock at ``path``; empty when the file does not exist.

    Parsed once per change of the file (mtime, size, inode): task creators and
    up-to-date checks call this many times per run.
    """
    return dict(_entries(path))


def lock_entry(path: Path, name: str) -> LockEntry | None:
    """The entry of image ``name`` in the lock at ``path``, without copying the others
    (one up-to-date check per image: a copy each would cost the square of the images)."""
    return _entries(path).get(name)


def _entries(path: Path) -> Mapping[str, LockEntry]:
    """The parsed entries, shared: callers must not change them."""
    path = Path(os.path.abspath(path))
    key = _stat_key(path)
    if key is None:
        return {}
    cached = _cache.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    try:
        with open(path, "rb") as f:
            raw = f.read(LOCK_MAX_BYTES + 1)
    except OSError as err:
        raise LockError(f"{path}: cannot read: {err.strerror}") from None
    if len(raw) > LOCK_MAX_BYTES:
        raise LockError(f"{path}: larger than {LOCK_MAX_BYTES} bytes; is this a lock file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LockError(f"{path}: not UTF-8; delete it and run `doit` to resolve again") from None
    entries = _parse(path, text)
    _cache[path] = (key, entries)
    return entries


def render_lock(entries: Mapping[str, LockEntry]) -> str:
    """The file content for ``entries``: sorted, two-space indent, final newline."""
    data = {"lockfile_version": LOCK_VERSION,
            "images": {name: entries[name].to_json() for name in sorted(entries)}}
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def update_lock(path: Path,
                change: Callable[[dict[str, LockEntry]], dict[str, LockEntry]]) -> bool:
    """Apply ``change`` to the current entries and write the result if it differs.

    ``change`` gets a private copy and returns the new entries. Returns True
    when the file was written. Safe to call from parallel resolve threads.
    """
    path = Path(os.path.abspath(path))
    with _path_lock(path):
        current = read_lock(path)
        new = change(dict(current))
        text = render_lock(new)
        try:
            old_text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            old_text = None
        if text == old_text:
            return False
        write_atomic(path, text.encode("utf-8"))
        _cache[path] = (_stat_key(path), dict(new))  # type: ignore[assignment]
        return True
