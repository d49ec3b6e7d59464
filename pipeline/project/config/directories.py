"""Where a manifest may put its outputs and its cache: apart, and away from the project.

gc sweeps the stores under ``cache_dir`` and a build replaces files in
``output_dir``; if one directory holds the other, or the cache holds the
project itself, one of them removes files it never made. Refused when the
manifest loads, before anything runs.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["overlap"]


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
