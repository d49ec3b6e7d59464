"""out/<name>.json: what an ext4 image was built from, and how to recognise it.

Written beside ``out/<name>.ext4`` after every build, atomically, with
sorted keys. It records the reference as written and as resolved (index,
manifest and config digests), the platform, the layers, the chain key, the
ext4 options (the builder among them), the image size and sha256, what made
the bytes besides (the e2fsprogs versions for the mkfs builder, the native
writer's format version for the native one), the version
of the pipeline that built it and the build time, so that anyone holding only
the output can tell what is in it.

Two fields serve the pipeline itself:

- ``build_key``: a digest of everything that decides the two outputs (the
  mkfs task's config); a record with another key describes another build;
- ``ext4_key``: a digest of what decides the ext4 bytes alone (layer chain,
  options, tool versions or writer format): when only the reference text changed, the image
  is kept and only this record is rewritten;
- ``runtime``: the image's runtime config (entrypoint, cmd, env,
  working_dir, user and the uid/gid it resolves to, exposed ports, labels,
  stop signal), for whoever boots the image;
- ``remote_cache``: null for a local build; for an image fetched from the
  remote cache instead of built, the repository, tag and artifact digest it
  came from (``tasks.remote``);
- ``ext4_stamp``: (size, mtime_ns) of the ext4 file when the record was
  written. A matching stamp shows the file is the one the record describes
  without reading gigabytes; a rewrite or truncation changes it (compared
  at the precision the file's mtime kept: ``files.stamp_matches``). The inode
  is left out on purpose: restoring ``out/`` from a CI cache gives new
  inodes but keeps times, and must not force a rebuild. When the stamp does
  not match, the mkfs step compares the file's sha256 with the record before
  it rebuilds anything.

Nothing read back is trusted: a record that does not parse, or has another
version, is treated as absent (the image is rebuilt). Fields a reader does not
know are ignored: records written before derived builds were removed carry a
``derived_from`` (the base image's key, or null) that nothing reads.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.base.files import Stamp, file_stamp, stamp_matches, write_atomic
from pipeline.base.jsontext import loads_bounded

__all__ = ["RECORD_VERSION", "BuildRecord", "build_key", "describes", "file_stamp", "now_utc",
           "read_record", "record_path_for", "write_record"]

RECORD_VERSION = 1
# A record is a few kilobytes even for a hundred layers.
RECORD_MAX_BYTES = 1 << 20



def record_path_for(output: Path) -> Path:
    """``out/alpine.ext4`` -> ``out/alpine.json``."""
    return output.with_suffix(".json")


def build_key(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of an mkfs task's config."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class BuildRecord:
    name: str
    ref: str
    """As written in images.toml."""
    resolved: Mapping[str, Any]
    """The lock entry's ``resolved`` object: registry, digests, platform, layers."""
    chain: str
    options: Mapping[str, Any]
    size: int
    sha256: str
    uuid: str
    tool_versions: Mapping[str, str]
    build_key: str
    ext4_key: str
    ext4_stamp: Stamp
    built_at: str
    runtime: Mapping[str, Any] | None = None
    """What the container would have run (``oci.runtime.RuntimeConfig.to_json``)."""
    clamped_times: tuple[str, ...] = ()
    """Paths whose time ext4 cannot hold, stored clamped to the inode's range."""
    native_writer_format: int | None = None
    """The native writer's format version for ``builder = "native"`` (``tool_versions``
    is then empty: no e2fsprogs tool made the bytes); None for the mkfs builder."""
    pipeline_version: str = ""
    """The rootfs-pipeline version that wrote the record (informative: it does not
    key the build, so an upgrade does not rebuild every image)."""
    remote_cache: Mapping[str, Any] | None = None
    """Where the image came from when it was fetched from the remote cache instead of
    built: ``{"repository", "tag", "digest"}`` (the artifact's manifest digest)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "record_version": RECORD_VERSION,
            "name": self.name,
            "ref": self.ref,
            "resolved": dict(self.resolved),
            "platform": self.resolved.get("platform"),
            "layers": list(self.resolved.get("layers", ())),
            "chain": self.chain,
            "options": dict(self.options),
            "size": self.size,
            "sha256": self.sha256,
            "uuid": self.uuid,
            "tool_versions": dict(self.tool_versions),
            "native_writer_format": self.native_writer_format,
            "build_key": self.build_key,
            "ext4_key": self.ext4_key,
            "ext4_stamp": list(self.ext4_stamp),
            "built_at": self.built_at,
            "runtime": None if self.runtime is None else dict(self.runtime),
            "clamped_times": list(self.clamped_times),
            "pipeline_version": self.pipeline_version,
            "remote_cache": None if self.remote_cache is None else dict(self.remote_cache),
        }


def now_utc() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def write_record(path: Path, record: BuildRecord) -> None:
    text = json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n"
    write_atomic(path, text.encode("utf-8"))


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when it is missing, unreadable or of another version."""
    try:
        with open(path, "rb") as f:
            raw = f.read(RECORD_MAX_BYTES + 1)
        data = loads_bounded(raw) if len(raw) <= RECORD_MAX_BYTES else None
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("record_version") != RECORD_VERSION:
        return None
    return data


def describes(record: Mapping[str, Any] | None, output: Path, key: str) -> bool:
    """True when ``record`` was written for build ``key`` and ``output`` is still that file."""
    if record is None or record.get("build_key") != key:
        return False
    return stamp_matches(record.get("ext4_stamp"), file_stamp(output))
