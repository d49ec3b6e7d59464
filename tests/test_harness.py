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
