"""An independent client (the ``oras`` package from PyPI) pulls a published image.

What a host without this project does: ``oras pull`` writes the titled
chunks, ``zstd -d`` and ``cat`` put the image back together; the bytes must
have the sha256 recorded in the artifact's config.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import oras.client
import zstandard

from pipeline.base.digest import parse_digest
from pipeline.registry.client import RegistryClient
from pipeline.remote.artifact import push_artifact
from tests.harness.registry import Registry

CHUNK = 64 << 10


def test_oras_pulls_titled_chunks_that_reassemble(client: RegistryClient, registry: Registry,
                                                  repo: str, tmp_path: Path) -> None:
    src = tmp_path / "src.ext4"
    src.write_bytes(os.urandom(CHUNK) + bytes(CHUNK) + b"tail" * 1000)
    push_artifact(client, registry.host, repo, src, name="web", key="k1", material={},
                  tags=["v1"], chunk_bytes=CHUNK)
    outdir = tmp_path / "pulled"
    oras.client.OrasClient(hostname=registry.host, insecure=True).pull(
        target=f"{registry.host}/{repo}:v1", outdir=str(outdir))
    parts = sorted(outdir.iterdir())
    assert [p.name for p in parts] == [f"web.ext4.{i:04d}.zst" for i in range(3)]
    whole = b"".join(zstandard.ZstdDecompressor().decompressobj().decompress(p.read_bytes())
                     for p in parts)
    manifest = json.loads(client.get_manifest(registry.host, repo, "v1").body)
    config_digest = parse_digest(manifest["config"]["digest"])
    with client.open_blob(registry.host, repo, config_digest) as stream:
        config = json.loads(b"".join(stream.chunks()))
    assert hashlib.sha256(whole).hexdigest() == config["sha256"]
    assert whole == src.read_bytes()
