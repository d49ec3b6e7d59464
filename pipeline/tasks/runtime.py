"""The image's runtime config for out/<name>.json (and ``config_path``), from the cache.

``runtime_config`` reads the image config blob (fetched by resolve; fetched
again here, verified, when the cache lost it: from the local source or the
registry, like a layer) and the image's ``/etc/passwd`` and ``/etc/group``
from its flat image, and returns what ``oci.runtime`` makes of them. A
user that does not resolve leaves ``uid``/``gid`` null and logs a warning:
the image is still built (the container runtime would refuse to start it,
the microVM's init may know better).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import structlog

from pipeline.flat.lookup import read_flat_files
from pipeline.oci.documents import CONFIG_MAX_BYTES
from pipeline.oci.runtime import parse_runtime, resolve_user
from pipeline.tasks.context import RunContext
from pipeline.tasks.plan import ImagePlan

__all__ = ["runtime_config", "ensure_config_blob"]

log = structlog.get_logger(__name__)

ACCOUNT_FILES = ("etc/passwd", "etc/group")


def ensure_config_blob(ctx: RunContext, image: ImagePlan) -> Path:
    """The verified config blob in the cache, fetched first when it is not there."""
    config, resolved, cache = image.resolved.config, image.resolved, ctx.cache.blobs
    local = resolved.local
    if local is not None:
        from pipeline.local.source import open_blob

        base = ctx.manifest.path.parent
        return cache.ingest(config.digest, config.size,
                            lambda: open_blob(local, base, config.digest, config.size),
                            what=str(local))
    return ctx.registries.first_success(
        ctx.registries.sources(resolved.registry, resolved.repository),
        f"config {config.digest}",
        lambda client, source: cache.fetch(client, source.registry, source.repository,
                                           config.digest, config.size))


def runtime_config(ctx: RunContext, image: ImagePlan, flat: Path) -> dict[str, Any]:
    """entrypoint, cmd, env, working_dir, user with uid/gid, exposed ports, labels, stop signal."""
    path = ensure_config_blob(ctx, image)
    with open(path, "rb") as f:
        body = f.read(CONFIG_MAX_BYTES + 1)
    where = f"image {image.name!r} config {image.resolved.config.digest}"
    runtime = parse_runtime(body, where=where)
    files = (read_flat_files(flat, ACCOUNT_FILES, ctx.cache.layers_root) if runtime.user
             else {})
    passwd, group = (files.get(name) for name in ACCOUNT_FILES)
    ids = resolve_user(runtime.user, _text(passwd), _text(group))
    if ids is None:
        log.warning("runtime.user_unresolved", image=image.name, user=runtime.user)
    return runtime.to_json(ids)


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", errors="replace")
