"""rootfs-pull resumes: an interrupted pull keeps only its verified chunks, fetches the rest,
and still ends in a sparse, atomic, verified file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import pipeline.remote.resume as resume
from pipeline.errors import RegistryError
from pipeline.registry.client import RegistryClient
from pipeline.remote.artifact import push_artifact
from pipeline.remote.pull import main as pull_main
from pipeline.remote.resume import part_paths
from tests.harness.registry import Registry

CHUNK = 64 << 10
CHUNKS = 8
MATERIAL = {"builder": 1}


def _image(tmp_path: Path, name: str = "src.ext4") -> Path:
    """Eight chunks: data, with chunks 2 and 5 all zeros (holes)."""
    path = tmp_path / name
    with open(path, "wb") as f:
        for i in range(CHUNKS):
            f.write(bytes(CHUNK) if i in (2, 5) else os.urandom(CHUNK))
    return path


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The digest of every blob GET (config and chunks) made through any RegistryClient."""
    seen: list[str] = []
    original = RegistryClient.open_blob

    def counting(self: RegistryClient, registry: str, repository: str, digest: Any,
                 **kw: Any) -> Any:
        seen.append(str(digest))
        return original(self, registry, repository, digest, **kw)

    monkeypatch.setattr(RegistryClient, "open_blob", counting)
    return seen


def _fail_after(monkeypatch: pytest.MonkeyPatch, good: int) -> None:
    """Chunk fetches after ``good`` write garbage where their bytes go, then the link drops."""
    original = resume.fetch_chunk
    calls = iter(range(10**6))

    def flaky(client: Any, registry: str, repository: str, where: str, f: Any, *args: Any) -> None:
        if next(calls) >= good:
            f.seek(args[3])  # the chunk's offset: half a chunk of junk, as a cut stream leaves
            f.write(b"\xee" * (CHUNK // 2))
            raise RegistryError("connection reset by peer (injected)")
        original(client, registry, repository, where, f, *args)

    monkeypatch.setattr(resume, "fetch_chunk", flaky)


def _chunk_gets(requests: list[str], manifest_chunks: set[str]) -> int:
    return sum(1 for d in requests if d in manifest_chunks)


def _push(client: RegistryClient, registry: Registry, repo: str, src: Path) -> set[str]:
    push_artifact(client, registry.host, repo, src, name="web", key="k1", material=MATERIAL,
                  tags=["v1"], chunk_bytes=CHUNK)
    manifest = json.loads(client.get_manifest(registry.host, repo, "v1").body)
    return {layer["digest"] for layer in manifest["layers"]}


def _pull(registry: Registry, repo: str, out: Path) -> int:
    return pull_main([f"{registry.host}/{repo}:v1", str(out)])


def _cut_pull(monkeypatch: pytest.MonkeyPatch, registry: Registry, repo: str, out: Path,
              good: int) -> None:
    """A pull whose link drops after ``good`` chunks: it fails, leaving its part file."""
    with monkeypatch.context() as patch:
        _fail_after(patch, good)
        assert _pull(registry, repo, out) == 1


def test_an_interrupted_pull_resumes_from_its_verified_chunks(
        client: RegistryClient, registry: Registry, repo: str, tmp_path: Path,
        requests: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    src = _image(tmp_path)
    chunks = _push(client, registry, repo, src)
    out = tmp_path / "pulled.ext4"
    part, state = part_paths(out)
    _cut_pull(monkeypatch, registry, repo, out, 3)
    assert not out.exists() and part.exists()
    assert json.loads(state.read_text())["done"] == 3
    assert "connection reset by peer" in capsys.readouterr().err
    requests.clear()
    assert _pull(registry, repo, out) == 0
    # Chunks 0-2 were read back and verified, not downloaded again.
    assert _chunk_gets(requests, chunks) == CHUNKS - 3
    assert "resumed after 3 verified chunk(s)" in capsys.readouterr().out
    assert out.read_bytes() == src.read_bytes()
    assert not part.exists() and not state.exists()
    # The junk the cut stream left in chunk 5 (a zero chunk) was cut off: a hole again.
    assert os.stat(out).st_blocks * 512 <= (CHUNKS - 2) * CHUNK + 8192


def test_a_damaged_part_file_is_fetched_again_from_the_damage_on(
        client: RegistryClient, registry: Registry, repo: str, tmp_path: Path,
        requests: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    src = _image(tmp_path)
    chunks = _push(client, registry, repo, src)
    out = tmp_path / "pulled.ext4"
    part, _ = part_paths(out)
    _cut_pull(monkeypatch, registry, repo, out, 6)
    with open(part, "r+b") as f:  # one flipped byte in chunk 1, which the state calls done
        f.seek(CHUNK + 77)
        byte = f.read(1)
        f.seek(CHUNK + 77)
        f.write(bytes([byte[0] ^ 1]))
    requests.clear()
    assert _pull(registry, repo, out) == 0
    assert _chunk_gets(requests, chunks) == CHUNKS - 1
    assert out.read_bytes() == src.read_bytes()


def test_progress_for_another_artifact_starts_over(
        client: RegistryClient, registry: Registry, repo: str, tmp_path: Path,
        requests: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    _push(client, registry, repo, _image(tmp_path, "old.ext4"))
    out = tmp_path / "pulled.ext4"
    _cut_pull(monkeypatch, registry, repo, out, 4)
    # The tag moved to another image meanwhile: nothing of the old part is used.
    src = _image(tmp_path)
    chunks = _push(client, registry, repo, src)
    requests.clear()
    assert _pull(registry, repo, out) == 0
    assert _chunk_gets(requests, chunks) == CHUNKS
    assert out.read_bytes() == src.read_bytes()


def test_a_deeply_nested_progress_file_is_no_progress(tmp_path: Path) -> None:
    # Under the 4 KiB cap, yet deeper than json.loads can recurse: a fresh start,
    # not a RecursionError.
    state = tmp_path / "out.ext4.part.json"
    state.write_text("[" * 4000)
    assert resume._load_done(state, "sha256:" + "0" * 64, 10, 3) == 0
