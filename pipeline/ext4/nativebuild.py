"""The native builder's side of the mkfs step: a flat image's entries and the layer stores'
files to a published, hashed ext4, with no staging tree, no e2fsprogs and no root.

``build_native`` reads the flat image's entries (checked as the mkfs builder
checks them), locates each regular file's bytes in its layer store
(``flat.lookup.content_files``), has ``ext4.native.write_image`` write the
image into a temporary file beside the output and hash it behind the copy of
file data, and renames it into place. It is always a full build, as every
build is (``ext4.builder``). No e2fsck runs here: the writer's proofs
(tests/ext4/native: e2fsck with two e2fsprogs versions, the independent
reader, debugfs, the kernel) stand behind every image, and a build that needed
a host tool would again depend on the host.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import replace
from pathlib import Path

import structlog

from pipeline.errors import Ext4Error
from pipeline.ext4.build import Ext4Result, host_full, host_too_small, read_flat_entries
from pipeline.ext4.native import write_image
from pipeline.ext4.options import Ext4Options
from pipeline.ext4.output import ImageOutput
from pipeline.flat.image import HEADER_NAME, read_header
from pipeline.flat.lookup import content_files

__all__ = ["build_native"]

log = structlog.get_logger(__name__)


def build_native(flat_dir: Path, layers_root: Path, output: Path, options: Ext4Options, *,
                 seed: str) -> Ext4Result:
    """``output`` for the flat image at ``flat_dir`` whose content is in the layer stores
    under ``layers_root``; nothing is left at ``output`` on failure."""
    started = time.monotonic()
    flat_dir, output = Path(flat_dir), Path(output)
    with ImageOutput(output) as out:     # an older output goes first, whatever happens
        entries = read_flat_entries(flat_dir)
        content = content_files(layers_root, read_header(flat_dir / HEADER_NAME).chain)
        read = round(time.monotonic() - started, 3)
        try:
            result = write_image(entries, content, out.fd, options, seed=seed,
                                 hash_path=out.path)
        except OSError as err:
            size = options.size or os.fstat(out.fd).st_size
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                # Our half-written temporary goes anyway: empty it first, or its
                # blocks would be counted as used in the free figure.
                os.ftruncate(out.fd, 0)
            _host_error(err, output, size)
            raise
        digest = result.sha256
        published = time.monotonic()
        out.publish()
    timings = {"read": read, **result.timings,
               "publish": round(time.monotonic() - published, 3),
               "total": round(time.monotonic() - started, 3)}
    log.debug("ext4.written", path=str(output), size=result.size, sha256=digest,
              **{f"seconds_{k}": v for k, v in timings.items()})
    built = Ext4Result(path=output, size=result.size, sha256=digest, uuid=result.uuid,
                       inodes=result.inodes, free_bytes=result.free_bytes,
                       free_inodes=result.free_inodes, tool_versions={},
                       clamped_times=result.clamped_times)
    return replace(built, timings=timings)


def _host_error(err: OSError, output: Path, size: int) -> None:
    """The output filesystem's refusals as one line a user can act on (others propagate);
    ``size``: the image's size as far as known."""
    if err.errno == errno.EFBIG:
        raise Ext4Error(host_too_small(output, size, err)) from None
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        raise Ext4Error(host_full(output, size)) from None
