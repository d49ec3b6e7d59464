"""The harness itself, proven against the real registry with plain httpx (no pipeline code)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile

import httpx
import pytest
import zstandard

from tests.harness.images import (MT, Layer, bomb, chardev, dir, fifo, file, hardlink,
                                  make_image, make_index, make_layer, opaque, symlink,
                                  whiteout)
from tests.harness.push import push
from tests.harness.registry import Registry

ACCEPT_ALL = ", ".join([MT.OCI_INDEX, MT.OCI_MANIFEST, MT.DOCKER_LIST, MT.DOCKER_MANIFEST])


def _decompress(layer: Layer) -> bytes:
    if layer.compression == "gzip":
        return gzip.decompress(layer.data)
    if layer.compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(layer.data)).read()
    return layer.data


SAMPLE = [dir("etc"), file("etc/hostname", b"harness\n"), symlink("etc/link", "hostname"),
          hardlink("etc/hard", "etc/hostname"), chardev("dev/null", 1, 3), fifo("run/fifo"),
          whiteout("etc/gone"), opaque("var")]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_round_trips_through_tarfile(compression: str) -> None:
    layer = make_layer(SAMPLE, compression=compression)
    raw = _decompress(layer)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == layer.diff_id
    assert layer.digest == "sha256:" + hashlib.sha256(layer.data).hexdigest()
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(raw))]
    assert names == ["etc", "etc/hostname", "etc/link", "etc/hard", "dev/null", "run/fifo",
                     "etc/.wh.gone", "var/.wh..wh..opq"]


def test_layers_are_deterministic() -> None:
    assert make_layer(SAMPLE).digest == make_layer(SAMPLE).digest
    assert make_image([make_layer(SAMPLE)]).digest == make_image([make_layer(SAMPLE)]).digest


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_push_image_and_pull_back_by_digest(registry: Registry, repo: str, oci: bool) -> None:
    layers = [make_layer(SAMPLE), make_layer([file("z", b"zstd")], compression="zstd"),
              make_layer([file("p", b"plain")], compression="none")]
    image = make_image(layers, oci=oci)
    digest = push(registry, repo, "v1", image)
    assert digest == image.digest
    with httpx.Client(base_url=registry.url) as c:
        r = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": ACCEPT_ALL})
        assert r.status_code == 200
        assert r.headers["content-type"] == (MT.OCI_MANIFEST if oci else MT.DOCKER_MANIFEST)
        assert r.content == image.manifest
        assert r.headers["docker-content-digest"] == image.digest
        for blob in image.blobs:
            got = c.get(f"/v2/{repo}/blobs/{blob.digest}")
            assert got.status_code == 200 and got.content == blob.data


def test_docker_config_and_credential_helper(docker_config) -> None:
    import json
    import os
    import subprocess

    docker_config.add_auth("127.0.0.1:5000", "alice", "wonderland")
    docker_config.set_cred_helper("ghcr.io", "fake")
    helper = docker_config.helper("fake", {"ghcr.io": ("bob", "builder")})
    assert os.environ["DOCKER_CONFIG"] == str(docker_config.dir)
    data = json.loads(docker_config.path.read_text())
    assert data["auths"]["127.0.0.1:5000"]["auth"] == "YWxpY2U6d29uZGVybGFuZA=="
    assert data["credHelpers"] == {"ghcr.io": "fake"}
    ok = subprocess.run(["docker-credential-fake", "get"], input="ghcr.io", text=True,
                        capture_output=True)
    assert ok.returncode == 0
    assert json.loads(ok.stdout) == {"ServerURL": "ghcr.io", "Username": "bob",
                                     "Secret": "builder"}
    missing = subprocess.run(["docker-credential-fake", "get"], input="quay.io", text=True,
                             capture_output=True)
    assert missing.returncode == 1
    assert missing.stdout.strip() == "credentials not found in native keychain"
    assert [c.input for c in helper.calls()] == ["ghcr.io", "quay.io"]
