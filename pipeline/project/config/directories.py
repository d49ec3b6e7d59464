"""Where a manifest may put its outputs and its cache: apart, away from the project, usable.

gc sweeps the stores under ``cache_dir`` and a build replaces files in
``output_dir``; if one directory holds the other, or the cache holds the
project itself, one of them removes files it never made. Refused when the
manifest loads, before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import ManifestError

__all__ = ["overlap", "prepare_directory"]


def overlap(output: Path, cache: Path, project: Path) -> tuple[str, str] | None:
    """``(key, reason)`` when the directories are unsafe together, else None."""
    if output == cache:
        return "cache_dir", ("`output_dir` and `cache_dir` must be different directories, both"
                             f" are {str(cache)!r}")
    if project.is_relative_to(cache):
        return "cache_dir", (f"`cache_dir` {str(cache)!r} holds the manifest's own directory"
                             f" {str(project)!r}, which gc would sweep; use a dedicated"
                             " directory such as \".cache\"")
    if project == output:
        return "output_dir", (f"`output_dir` is the manifest's own directory {str(project)!r};"
                              " an image's files could replace images.toml or its lock: use a"
                              " directory such as \"out\"")
    for inner, outer, key, other in ((output, cache, "output_dir", "cache_dir"),
                                     (cache, output, "cache_dir", "output_dir")):
        if inner.is_relative_to(outer):
            return key, (f"`{key}` {str(inner)!r} is inside `{other}` {str(outer)!r}; give"
                         " them separate directories (gc and builds would remove each"
                         " other's files)")
    return None


def prepare_directory(path: Path, key: str, manifest: Path) -> None:
    """Create ``path`` (and its parents) or say in one line why it cannot be used."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied", str(path))
    except FileExistsError:
        raise ManifestError(f"`{key}` {str(path)!r} exists and is not a directory; move it"
                            f" away or set `{key}` elsewhere", path=str(manifest),
                            key=key) from None
    except OSError as err:
        raise ManifestError(f"`{key}` {str(path)!r} cannot be created or written"
                            f" ({err.strerror or err}); fix its permissions or set `{key}`"
                            " elsewhere", path=str(manifest), key=key) from None
