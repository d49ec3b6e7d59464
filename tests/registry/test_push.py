"""Push against the real docker-registry: HEAD, mount, streamed upload, manifest PUT."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import pytest

from pipeline.base.digest import Digest
from pipeline.errors import RegistryError
from pipeline.oci import mediatypes as mt
from pipeline.registry.client import RegistryClient
from pipeline.registry.push import blob_exists, ensure_blob, put_manifest
from tests.harness.registry import Registry


def sha(data: bytes) -> Digest:
    return Digest("sha256", hashlib.sha256(data).hexdigest())


def pieces(data: bytes, size: int = 7) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def pull(client: RegistryClient, registry: Registry, repo: str, digest: Digest) -> bytes:
    with client.open_blob(registry.host, repo, digest) as stream:
        return b"".join(stream.chunks())


def test_upload_streams_then_head_finds_it(client: RegistryClient, registry: Registry,
                                           repo: str) -> None:
    data = b"chunk of an ext4 image " * 1000
    digest = sha(data)
    assert not blob_exists(client, registry.host, repo, digest)
    how = ensure_blob(client, registry.host, repo, digest, len(data), lambda: pieces(data))
    assert how == "uploaded"
    assert blob_exists(client, registry.host, repo, digest)
    assert pull(client, registry, repo, digest) == data
    assert ensure_blob(client, registry.host, repo, digest, len(data),
                       lambda: pieces(data)) == "present"


def test_blob_in_another_repository_is_mounted_not_uploaded(
        client: RegistryClient, registry: Registry, repo: str) -> None:
    data = b"shared base chunk"
    digest = sha(data)
    ensure_blob(client, registry.host, repo + "-src", digest, len(data), lambda: [data])

    def never() -> Iterator[bytes]:
        raise AssertionError("mounted blobs are not uploaded")

    how = ensure_blob(client, registry.host, repo, digest, len(data), never,
                      mount_from=repo + "-src")
    assert how == "mounted"
    assert pull(client, registry, repo, digest) == data


def test_wrong_digest_is_refused_by_the_registry(client: RegistryClient, registry: Registry,
                                                 repo: str) -> None:
    data = b"the bytes"
    with pytest.raises(RegistryError) as err:
        ensure_blob(client, registry.host, repo, sha(b"other bytes"), len(data),
                    lambda: [data])
    assert err.value.status == 400
    assert err.value.code == "DIGEST_INVALID"
    assert not err.value.temporary


def test_manifest_put_last_is_pullable_by_tag(client: RegistryClient, registry: Registry,
                                             repo: str) -> None:
    config, layer = b"{}", b"layer"
    for blob in (config, layer):
        ensure_blob(client, registry.host, repo, sha(blob), len(blob), lambda b=blob: [b])
    body = json.dumps({
        "schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
        "artifactType": "application/vnd.example.test",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": str(sha(config)), "size": len(config)},
        "layers": [{"mediaType": "application/octet-stream", "digest": str(sha(layer)),
                    "size": len(layer)}]}).encode()
    digest = put_manifest(client, registry.host, repo, "rk-test", mt.OCI_MANIFEST, body)
    assert digest == sha(body)
    got = client.get_manifest(registry.host, repo, "rk-test")
    assert got.body == body and got.digest == digest
    # Pushing the same manifest again (two runners, one key) also succeeds.
    assert put_manifest(client, registry.host, repo, "rk-test", mt.OCI_MANIFEST, body) == digest
