"""The remote cache and publish settings: ``[cache]`` in images.toml, ROOTFS_REMOTE_CACHE*.

::

    [cache]
    remote = "registry.example.com/team/rootfs-cache"   # an OCI repository
    push   = true                                       # false: read only

    [images.web]
    publish = "registry.example.com/team/rootfs/web:v1"

``ROOTFS_REMOTE_CACHE=<repository>`` and ``ROOTFS_REMOTE_CACHE_PUSH=0|1``
win over the file (a CI job points an unchanged manifest at its cache, or
makes a pull-request job read only). ``ROOTFS_REMOTE_CACHE=""`` (set, empty)
turns the remote cache off. Credentials, mirrors' absence (the cache is
asked directly), ``insecure`` and the loopback rule are those of pulls: the
repository's registry is reached through the run's registry client.

Nothing here is trusted: a repository with a tag, a digest or a bad name is
refused, naming the file and line or the variable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import BadReference, ManifestError, SettingError
from pipeline.oci.reference import ImageRef, parse_reference

__all__ = ["RemoteCache", "CACHE_KEYS", "REMOTE_VAR", "PUSH_VAR", "parse_repository",
           "parse_publish", "cache_from_table", "apply_remote_env"]

CACHE_KEYS = ("push", "remote")
REMOTE_VAR = "ROOTFS_REMOTE_CACHE"
PUSH_VAR = "ROOTFS_REMOTE_CACHE_PUSH"
_YES = ("1", "true", "yes", "on")
_NO = ("0", "false", "no", "off")


@dataclass(frozen=True, slots=True)
class RemoteCache:
    """An OCI repository holding built images under ``rk-<key>`` tags."""

    registry: str
    repository: str
    push: bool = True

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}"


def parse_repository(text: str) -> tuple[str, str]:
    """``registry/path`` (no tag, no digest) as (registry, repository); ValueError when not."""
    if "@" in text:
        raise ValueError(f"{text!r} names a digest; give a repository such as "
                         "'registry.example.com/team/rootfs-cache'")
    try:
        ref = parse_reference(text)
    except BadReference as err:
        raise ValueError(str(err)) from None
    if text.rsplit("/", 1)[-1].count(":") or ref.tag != "latest":
        raise ValueError(f"{text!r} names a tag; give the repository alone (the cache chooses "
                         "its own tags, rk-<key>)")
    if "/" not in text:
        raise ValueError(f"{text!r} has no registry host; write it in full, e.g. "
                         "'registry.example.com/team/rootfs-cache'")
    return ref.registry, ref.repository


def parse_publish(text: str) -> ImageRef:
    """A ``publish`` reference: ``registry/repository:tag``, the tag required."""
    if "@" in text:
        raise ValueError(f"{text!r} names a digest; a published image needs a tag, e.g. "
                         "'registry.example.com/team/rootfs/web:v1'")
    ref = parse_reference(text)
    if ":" not in text.rsplit("/", 1)[-1]:
        raise ValueError(f"{text!r} has no tag; write one, e.g. "
                         f"'{ref.registry}/{ref.repository}:v1'")
    if "/" not in text:
        raise ValueError(f"{text!r} has no registry host; write it in full")
    return ref


def cache_from_table(table: Mapping[str, Any], fail: Any) -> RemoteCache | None:
    """``[cache]`` (keys already checked) as a RemoteCache; ``fail(message, key)`` blames."""
    if "remote" not in table:
        if "push" in table:
            raise fail("`push` needs `remote`, the repository to push to, e.g. remote = "
                       "\"registry.example.com/team/rootfs-cache\"", "push")
        return None
    text = table["remote"]
    if not isinstance(text, str):
        raise fail(f"`remote` must be a string such as \"registry.example.com/team/cache\", "
                   f"got {type(text).__name__} {text!r}", "remote")
    try:
        registry, repository = parse_repository(text)
    except ValueError as err:
        raise fail(f"bad `remote`: {err}", "remote") from None
    push = table.get("push", True)
    if not isinstance(push, bool):
        raise fail(f"`push` must be true or false, got {type(push).__name__} {push!r}", "push")
    return RemoteCache(registry, repository, push)


def apply_remote_env(cache: RemoteCache | None,
                     environ: Mapping[str, str]) -> RemoteCache | None:
    """The environment's ROOTFS_REMOTE_CACHE and ROOTFS_REMOTE_CACHE_PUSH over the file's."""
    if REMOTE_VAR in environ:
        text = environ[REMOTE_VAR].strip()
        if not text:
            cache = None
        else:
            try:
                registry, repository = parse_repository(text)
            except ValueError as err:
                raise ManifestError(str(err), path=f"environment variable {REMOTE_VAR}") from None
            cache = RemoteCache(registry, repository, cache.push if cache else True)
    raw = environ.get(PUSH_VAR)
    if raw is not None and raw.strip():
        value = raw.strip().lower()
        if value not in _YES + _NO:
            raise SettingError(PUSH_VAR, raw, "0 (read only) or 1 (push what is built)")
        if cache is not None:
            cache = RemoteCache(cache.registry, cache.repository, value in _YES)
    return cache
