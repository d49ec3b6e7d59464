"""The ``config_path`` file as a layer of its own: one root-owned 0644 file on top.

An image with ``config_path = "/etc/rootfs/config.json"`` gets its runtime
config written into the image at that path. It is added as one more layer
store on top of the image's layers, so flatten puts it into the flat image
like any layer's file and both ext4 builders get it, and
the chain (hence the flat image and ext4 keys) changes with the option.

The store is not made from a tar: its single index entry is written here.
Its digest is not a content digest but a key (``config_layer_key``) over
everything that decides the file: the image config's digest, the image's
layers (whose /etc/passwd resolves the user), the path and the format of
the file. Missing parent directories are created by flatten as plain
root-owned 0755 directories; existing ones keep their owner and mode.

What it refuses to trust: the path, which comes from images.toml: it must
be absolute, normalised, free of control characters and ``..``, and name a
file below ``/`` (``check_config_path``).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

from pipeline.base.digest import Digest, digest_of
from pipeline.errors import LayerError
from pipeline.layers.store import EntryKind, IndexEntry, LayerStore, StoreWriter

__all__ = ["CONFIG_FILE_MODE", "CONFIG_FILE_FORMAT", "check_config_path", "config_layer_key",
           "write_config_layer"]

CONFIG_FILE_MODE = 0o644
# Bumped when the file's content changes shape: a new key, so new stores.
CONFIG_FILE_FORMAT = "runtime-config-v1"
# A path component longer than this is refused by ext4 (EXT4_NAME_LEN).
NAME_MAX_BYTES = 255
PATH_MAX_BYTES = 4095
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_config_path(path: str) -> str:
    """``path`` if it is a clean absolute file path; else ValueError saying why."""
    if not path.startswith("/"):
        raise ValueError(f"{path!r} must be an absolute path such as '/etc/rootfs/config.json'")
    if _CONTROL.search(path):
        raise ValueError(f"{path!r} holds a control character")
    parts = path[1:].split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{path!r} must be normalised: no empty, '.' or '..' components, "
                         "no trailing '/'")
    if len(path.encode()) > PATH_MAX_BYTES or any(len(p.encode()) > NAME_MAX_BYTES
                                                  for p in parts):
        raise ValueError(f"{path!r} is longer than a file system allows")
    return path


def config_layer_key(config: Digest, layers: Sequence[str], path: str) -> Digest:
    """The store key of the config file layer of one image."""
    h = hashlib.sha256(f"rootfs-pipeline {CONFIG_FILE_FORMAT}\0{config}\0{path}\0".encode())
    for digest in layers:
        h.update(digest.encode("ascii") + b"\n")
    return Digest("sha256", h.hexdigest())


def write_config_layer(layers_root: Path, key: Digest, path: str, data: bytes) -> LayerStore:
    """The finished store holding ``data`` at ``path`` (made once per key)."""
    try:
        return LayerStore.open(layers_root, key)
    except LayerError:  # not made yet (a damaged one is refused by commit's open)
        LayerStore.remove_stale(layers_root, key)
    with StoreWriter(layers_root, key, digest_of(data)) as writer:
        content, _ = writer.append_content(lambda fd: _write_all(fd, data))
        writer.add(IndexEntry(path=path.lstrip("/"), kind=EntryKind.REGULAR,
                              mode=CONFIG_FILE_MODE, uid=0, gid=0, mtime_ns=0,
                              size=len(data), content=content))
        return writer.commit(stream_bytes=len(data))


def _write_all(fd: int, data: bytes) -> int:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    return len(data)
