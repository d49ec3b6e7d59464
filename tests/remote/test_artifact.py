"""The ext4 artifact: pushed to the real registry, fetched back verified and sparse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.errors import RegistryError, RemoteArtifactError
from pipeline.registry.client import RegistryClient
from pipeline.remote.artifact import push_artifact
from pipeline.remote.fetch import fetch_artifact
from pipeline.remote.pull import main as pull_main
from tests.harness.registry import Registry

CHUNK = 64 << 10
MATERIAL = {"builder": 1, "layers": ["sha256:" + "a" * 64]}


def image(tmp_path: Path) -> Path:
    """Three chunks of data, two of zeros (holes), one short tail."""
    path = tmp_path / "src.ext4"
    with open(path, "wb") as f:
        f.write(os.urandom(CHUNK))
        f.seek(3 * CHUNK)
        f.write(b"superblock copy" * 100)
        f.seek(5 * CHUNK + 123)
        f.write(b"tail")
    return path


def push(client: RegistryClient, registry: Registry, repo: str, src: Path) -> str:
    push_artifact(client, registry.host, repo, src, name="web", key="k1", material=MATERIAL,
                  tags=["rk-k1"], chunk_bytes=CHUNK)
    return "rk-k1"


def test_round_trip_is_byte_identical_and_sparse(client: RegistryClient, registry: Registry,
                                                 repo: str, tmp_path: Path) -> None:
    src = image(tmp_path)
    tag = push(client, registry, repo, src)
    out = tmp_path / "out.ext4"
    got = fetch_artifact(client, registry.host, repo, tag, out, key="k1")
    assert out.read_bytes() == src.read_bytes()
    assert got.size == src.stat().st_size and got.material == MATERIAL
    # Chunks 1, 2 and 4 are zeros: holes, not written blocks.
    assert os.stat(out).st_blocks * 512 < 4 * CHUNK


def test_pushing_again_uploads_nothing_and_keeps_the_digest(
        client: RegistryClient, registry: Registry, repo: str, tmp_path: Path) -> None:
    src = image(tmp_path)
    first = push_artifact(client, registry.host, repo, src, name="web", key="k1",
                          material=MATERIAL, tags=["rk-k1"], chunk_bytes=CHUNK)
    before = registry.log_text().count('"PUT /v2/' + repo + '/blobs/uploads')
    second = push_artifact(client, registry.host, repo, src, name="web", key="k1",
                           material=MATERIAL, tags=["rk-k1"], chunk_bytes=CHUNK)
    assert second == first
    assert registry.log_text().count('"PUT /v2/' + repo + '/blobs/uploads') == before


def _flip_chunk(registry: Registry, repo: str, client: RegistryClient) -> None:
    import json
    manifest = json.loads(client.get_manifest(registry.host, repo, "rk-k1").body)
    path = registry.blob_file(manifest["layers"][0]["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _drop_chunk(registry: Registry, repo: str, client: RegistryClient) -> None:
    import json
    manifest = json.loads(client.get_manifest(registry.host, repo, "rk-k1").body)
    registry.blob_file(manifest["layers"][2]["digest"]).unlink()


@pytest.mark.parametrize(("damage", "kind", "message"), [
    (_flip_chunk, RemoteArtifactError, "chunk at offset 0 hashes to sha256:"),
    (_drop_chunk, RegistryError, "404 Not Found (BLOB_UNKNOWN"),
], ids=["flipped-byte-in-a-chunk", "missing-chunk"])
def test_damaged_artifact_never_lands(client: RegistryClient, private_registry: Registry,
                                      repo: str, tmp_path: Path, damage: object,
                                      kind: type[Exception], message: str) -> None:
    registry = private_registry  # the damage reaches every repository holding the chunk
    src = image(tmp_path)
    push(client, registry, repo, src)
    damage(registry, repo, client)  # type: ignore[operator]
    out = tmp_path / "out.ext4"
    with pytest.raises(kind) as err:
        fetch_artifact(client, registry.host, repo, "rk-k1", out, key="k1")
    assert message in str(err.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["src.ext4"]


def test_config_for_another_key_is_a_miss(client: RegistryClient, registry: Registry,
                                          repo: str, tmp_path: Path) -> None:
    push(client, registry, repo, image(tmp_path))
    out = tmp_path / "out.ext4"
    with pytest.raises(RemoteArtifactError) as err:
        fetch_artifact(client, registry.host, repo, "rk-k1", out, key="k2")
    assert str(err.value) == (
        f"{registry.host}/{repo}:rk-k1: the config is for key 'k1', expected 'k2'; it is "
        "treated as a cache miss (push it again from a good build, or delete the tag)")
    assert not out.exists()


def test_rootfs_pull_writes_a_published_image(client: RegistryClient, registry: Registry,
                                              repo: str, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    src = image(tmp_path)
    push_artifact(client, registry.host, repo, src, name="web", key="k1", material=MATERIAL,
                  tags=["v1"], chunk_bytes=CHUNK)
    out = tmp_path / "pulled.ext4"
    assert pull_main([f"{registry.host}/{repo}:v1", str(out)]) == 0
    assert out.read_bytes() == src.read_bytes()
    assert f"{out}: {src.stat().st_size} bytes, sha256:" in capsys.readouterr().out


@pytest.mark.parametrize(("reference", "message"), [
    ("bad ref!", "rootfs-pull: invalid image reference 'bad ref!': invalid repository path "
                 "component 'bad ref!'"),
    ("{host}/test/nothing-here:v1", "404 Not Found"),
], ids=["bad-reference", "missing-tag"])
def test_rootfs_pull_fails_in_one_line(registry: Registry, tmp_path: Path, reference: str,
                                       message: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pulled.ext4"
    assert pull_main([reference.format(host=registry.host), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("rootfs-pull: ") and message in err and err.count("\n") == 1
    assert "Traceback" not in err and not out.exists()
