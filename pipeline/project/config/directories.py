"""Where a manifest may put its outputs and its cache: apart, away from the project, usable.

gc sweeps the stores under ``cache_dir`` and a build replaces files in
``output_dir``; if one directory holds the other, or the cache holds the
project itself, one of them removes files it never made. Refused when the
manifest loads, before anything runs. So is a fixed ``size`` the output
filesystem cannot make a file of (64 TiB on ext4, whose files stop at 16
TiB): otherwise mkfs would find out after fetch, unpack and flatten ran.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.base.units import GiB, format_size
from pipeline.errors import ManifestError

if TYPE_CHECKING:  # manifest.py imports this module to check overlaps
    from pipeline.project.config.manifest import ImageSpec

__all__ = ["overlap", "prepare_directory", "check_fixed_sizes", "PROBE_FROM_BYTES"]

# Smaller sizes are not probed: every filesystem an output lands on holds a
# 4 GiB - 1 file (FAT's limit), and one that cannot make sparse files (FAT)
# would write zeros for the whole probe. FAT refuses larger ones at once.
PROBE_FROM_BYTES = 4 * GiB


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
        fix = ("a parent of it is a file, move that away" if err.errno == errno.ENOTDIR
               else "fix its permissions")
        raise ManifestError(f"`{key}` {str(path)!r} cannot be created or written"
                            f" ({err.strerror or err}); {fix} or set `{key}` elsewhere",
                            path=str(manifest), key=key) from None


def check_fixed_sizes(directory: Path, images: Iterable[ImageSpec], manifest: Path) -> None:
    """Refuse a fixed ``size`` the filesystem holding ``directory`` cannot make a file of.

    The probe is what the build does first: a sparse ``ftruncate`` to the
    size, here of a hidden temporary removed at once (microseconds; no data
    is written). Only EFBIG and EINVAL are the size's fault; any other
    error is left to the build, which reports it in context.
    """
    verdicts: dict[int, str | None] = {}
    for spec in images:
        size = spec.ext4.size
        if size is None or size < PROBE_FROM_BYTES:
            continue
        if size not in verdicts:
            verdicts[size] = _too_large(directory, size)
        if verdicts[size] is not None:
            raise ManifestError(
                f"`size` {format_size(size)} is more than the filesystem holding"
                f" {str(directory)!r} allows in one file ({verdicts[size]}); choose a smaller"
                " `size` or an output_dir on a filesystem that allows larger files",
                path=str(manifest), line=spec.line, image=spec.name, key="size")


def _too_large(directory: Path, size: int) -> str | None:
    """The reason a ``size``-byte file cannot exist in ``directory``, or None."""
    fd, name = tempfile.mkstemp(prefix=".size-probe-", dir=directory)
    try:
        os.ftruncate(fd, size)
    except OSError as err:
        if err.errno in (errno.EFBIG, errno.EINVAL):
            return err.strerror or str(err)
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    return None
