"""``rootfs-pull <reference> <out.ext4>``: fetch a published image without the project.

A host that boots microVMs needs the ext4 and nothing else: this console
script resolves the reference, verifies every chunk and the whole image (as
``fetch.fetch_artifact`` does for the remote cache) and writes the file
atomically and sparse, and resumes an interrupted pull from its verified
chunks (``resume``: ``<out>.part`` and ``<out>.part.json`` beside the
output until it is complete). Credentials come from Docker's config.json, as for
pulls; plain HTTP only on loopback or with ``--insecure``.

Exit status: 0 written, 1 a PipelineError (one line on stderr, no traceback),
2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.oci.reference import parse_reference

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs-pull", description="Fetch, verify and write a published rootfs image.")
    parser.add_argument("reference", help="registry/repository:tag or @sha256:digest")
    parser.add_argument("output", type=Path, help="where to write the ext4 image")
    parser.add_argument("--insecure", action="store_true",
                        help="allow plain HTTP to this registry (not only on loopback)")
    args = parser.parse_args(argv)
    from pipeline.registry.client import RegistryClient  # httpx loads only when pulling
    from pipeline.remote.resume import pull_resumable

    try:
        ref = parse_reference(args.reference)
        insecure = frozenset({ref.registry}) if args.insecure else frozenset()
        with RegistryClient(insecure_hosts=insecure) as client:
            got, reused = pull_resumable(client, ref.registry, ref.repository, ref.reference,
                                         args.output)
    except PipelineError as err:
        print(f"rootfs-pull: {str(err).encode('unicode_escape').decode('ascii')}",
              file=sys.stderr)
        return 1
    resumed = f", resumed after {reused} verified chunk(s)" if reused else ""
    print(f"{args.output}: {got.size} bytes, sha256:{got.sha256}, artifact {got.digest}{resumed}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
