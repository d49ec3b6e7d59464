"""A fixed ``size`` the output filesystem cannot make a file of is refused when the manifest loads.

The host's per-file limit is set with RLIMIT_FSIZE (what ext4's 16 TiB does
to a 64 TiB file, on any filesystem): ``ftruncate`` past it fails with EFBIG.
"""

from __future__ import annotations

import resource
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.base.units import GiB
from pipeline.errors import ManifestError
from pipeline.project.config import parse_manifest
from pipeline.project.config.directories import PROBE_FROM_BYTES, check_fixed_sizes
from pipeline.project.config.manifest import ImageSpec

MANIFEST = Path("/proj/images.toml")


@pytest.fixture
def files_stop_at_8_gib() -> Iterator[None]:
    """This process may not make files of 8 GiB or more (EFBIG, not SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 * GiB, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def images(text: str) -> list[ImageSpec]:
    return list(parse_manifest(text, MANIFEST).images)


@pytest.mark.usefixtures("files_stop_at_8_gib")
def test_a_size_beyond_the_per_file_limit_is_one_line_naming_image_and_line(
        tmp_path: Path) -> None:
    specs = images('[images.a]\nref = "alpine"\nsize = "4GiB"\n'
                   '[images.b]\nref = "alpine"\nsize = "16GiB"\n')
    with pytest.raises(ManifestError) as err:
        check_fixed_sizes(tmp_path, specs, MANIFEST)
    assert str(err.value) == (
        f"/proj/images.toml:4: image 'b': `size` 16 GiB (17179869184 bytes) is more than the"
        f" filesystem holding {str(tmp_path)!r} allows in one file (File too large); choose a"
        " smaller `size` or an output_dir on a filesystem that allows larger files")
    assert (err.value.image, err.value.key) == ("b", "size")
    assert list(tmp_path.iterdir()) == []  # the probe is gone


@pytest.mark.usefixtures("files_stop_at_8_gib")
def test_sizes_the_filesystem_holds_and_auto_pass_and_leave_nothing(tmp_path: Path) -> None:
    specs = images('[images.a]\nref = "alpine"\nsize = "4GiB"\n'
                   '[images.b]\nref = "alpine"\n'
                   '[images.c]\nref = "alpine"\nsize = "7GiB"\n')
    check_fixed_sizes(tmp_path, specs, MANIFEST)
    assert list(tmp_path.iterdir()) == []


def test_small_sizes_are_not_probed(tmp_path: Path) -> None:
    """Under 4 GiB every filesystem holds the file, and FAT would write the zeros."""
    assert PROBE_FROM_BYTES == 4 * GiB
    missing = tmp_path / "missing"  # a probe here would fail with FileNotFoundError
    check_fixed_sizes(missing, images('[images.a]\nref = "alpine"\nsize = "3GiB"\n'), MANIFEST)
