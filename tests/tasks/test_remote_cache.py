"""The remote cache end to end: the real doit, the real registry as cache, real e2fsprogs.

A warm cache gives a fresh directory every image without one layer blob
requested (counted in the registry's access log) and byte for byte what a
local build gives; a damaged entry (flipped byte, edited config, missing
chunk, push killed before its manifest) is a miss, a correct local build and
a repaired entry; ``doit collect`` checks the cache; ``publish`` pushes an
artifact that ``rootfs-pull`` gets back.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.registry.client import RegistryClient
from pipeline.remote.pull import main as pull_main
from tests.harness.doitrun import World, make_world, run_doit, sha256_file
from tests.harness.push import push_manifest
from tests.harness.registry import Registry

pytestmark = pytest.mark.slow


@pytest.fixture
def world(registry: Registry, repo: str, tmp_path: Path) -> World:
    return make_world(registry, repo, tmp_path)


def cache_of(world: World) -> str:
    return f"{world.registry.host}/{world.namespace}/rootfs-cache"


def env(world: World, push: str = "1") -> dict[str, str]:
    return {"ROOTFS_REMOTE_CACHE": cache_of(world), "ROOTFS_REMOTE_CACHE_PUSH": push}


def fresh(world: World, name: str) -> Path:
    """Another directory with the same manifest and lock file (another runner)."""
    other = world.project.parent / name
    other.mkdir()
    for file in ("images.toml", "images.lock.json"):
        shutil.copy(world.project / file, other / file)
    return other


def layer_gets(world: World, since: int) -> list[str]:
    """GETs of the images' layer blobs in the registry's access log after offset ``since``."""
    digests = {world.base.digest, *(top.digest for top in world.tops.values())}
    log = world.registry.log_text()[since:]
    return [line for line in log.splitlines()
            if '"GET /v2/' in line and any(d in line for d in digests)]


def outputs(project: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((project / "out").glob("*.ext4"))}


def entry(world: World, client: RegistryClient, tag: str) -> dict:  # type: ignore[type-arg]
    repo = f"{world.namespace}/rootfs-cache"
    return json.loads(client.get_manifest(world.registry.host, repo, tag).body)


def tags(client: RegistryClient, world: World) -> list[str]:
    repo = f"{world.namespace}/rootfs-cache"
    url = f"{world.registry.url}/v2/{repo}/tags/list"
    import httpx

    return sorted(httpx.get(url).json().get("tags") or [])


def test_warm_cache_gives_a_fresh_directory_every_image_without_a_layer_blob(
        world: World, client: RegistryClient) -> None:
    cold = run_doit(world.project, env=env(world)).check()
    assert sorted(t for t in cold.ran if t.startswith("remote:")) == [
        "remote:a", "remote:b", "remote:c"]
    pushed = {e["task"]: e["pushed"] for e in cold.events
              if e.get("event") == "task.done" and "pushed" in e}
    assert sorted(pushed) == ["mkfs:a", "mkfs:b", "mkfs:c"]
    local = outputs(world.project)
    assert len(tags(client, world)) == 3

    other = fresh(world, "runner2")
    mark = len(world.registry.log_text())
    warm = run_doit(other, env=env(world)).check()
    assert layer_gets(world, mark) == []
    assert outputs(other) == local
    assert not any(t.startswith(("fetch-blob:", "unpack:", "flatten:")) for t in warm.ran)
    hits = [e for e in warm.events if e.get("event") == "task.done" and e.get("outcome") == "hit"]
    assert len(hits) == 3
    record = json.loads((other / "out/a.json").read_text())
    assert record["remote_cache"]["tag"].startswith("rk-")
    assert record["remote_cache"]["digest"].startswith("sha256:")
    assert record["sha256"] == local["a.ext4"]
    built = json.loads((world.project / "out/a.json").read_text())
    assert record["runtime"] == built["runtime"] and record["uuid"] == built["uuid"]
    # What decided the bytes reads the same as in the record of the local build.
    for field in ("tool_versions", "native_writer_format"):
        assert record[field] == built[field], field

    # A second run: the no-op stamp holds, no request at all.
    again = run_doit(other, env=env(world), audit=True).check()
    assert again.ran == [] and again.connects == []
    # The stamp gone (a full graph), still no layer fetched for images from the cache.
    (other / ".cache/noop.json").unlink()
    mark = len(world.registry.log_text())
    full = run_doit(other, env=env(world)).check()
    assert layer_gets(world, mark) == []
    assert not any(t.startswith(("fetch-blob:", "unpack:", "flatten:", "remote:"))
                   for t in full.ran)


def _flip_chunk(world: World, client: RegistryClient, tag: str) -> None:
    path = world.registry.blob_file(entry(world, client, tag)["layers"][0]["digest"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _drop_chunk(world: World, client: RegistryClient, tag: str) -> None:
    world.registry.blob_file(entry(world, client, tag)["layers"][-1]["digest"]).unlink()


def _edit_config(world: World, client: RegistryClient, tag: str) -> None:
    """Another manifest under the tag: same key, the material says another platform."""
    from tests.harness.images import Blob
    from tests.harness.push import push_blob

    manifest = entry(world, client, tag)
    repo = f"{world.namespace}/rootfs-cache"
    old = world.registry.blob_file(manifest["config"]["digest"]).read_bytes()
    config = json.loads(old)
    config["material"]["platform"] = "linux/edited"
    data = json.dumps(config).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    push_blob(world.registry, repo, Blob(data, manifest["config"]["mediaType"]))
    manifest["config"].update(digest=digest, size=len(data))
    push_manifest(world.registry, repo, tag, json.dumps(manifest).encode(),
                  manifest["mediaType"])


def _kill_before_manifest(world: World, client: RegistryClient, tag: str) -> None:
    """What a push killed after its blobs leaves: blobs, no tag."""
    import httpx

    repo = f"{world.namespace}/rootfs-cache"
    digest = client.head_manifest(world.registry.host, repo, tag).digest
    response = httpx.delete(f"{world.registry.url}/v2/{repo}/manifests/{digest}")
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("damage", [_flip_chunk, _edit_config, _drop_chunk,
                                    _kill_before_manifest],
                         ids=["flipped-byte-in-a-chunk", "edited-config", "missing-chunk",
                              "push-killed-before-its-manifest"])
def test_a_damaged_entry_is_a_miss_a_correct_local_build_and_a_repaired_cache(
        private_registry: Registry, repo: str, tmp_path: Path, client: RegistryClient,
        damage: object) -> None:
    # Its own registry: a flipped or dropped chunk is flipped or missing for every
    # repository of a registry holding the same bytes (the shard tests' included).
    world = make_world(private_registry, repo, tmp_path)
    run_doit(world.project, env=env(world)).check()
    local = outputs(world.project)
    key_tag = next(t for t in tags(client, world) if _names_a(entry(world, client, t)))
    damage(world, client, key_tag)  # type: ignore[operator]

    other = fresh(world, "runner2")
    run = run_doit(other, env=env(world)).check()
    assert outputs(other) == local
    warnings = [e for e in run.events if e.get("event") == "remote.bad_entry"]
    if damage is not _kill_before_manifest:
        assert len(warnings) == 1 and warnings[0]["image"] == "a"
    record = json.loads((other / "out/a.json").read_text())
    assert record["remote_cache"] is None  # built here

    # The cache is sound again: a third runner gets every image from it.
    third = fresh(world, "runner3")
    mark = len(world.registry.log_text())
    run_doit(third, env=env(world)).check()
    assert layer_gets(world, mark) == []
    assert outputs(third) == local


def _names_a(manifest: dict) -> bool:  # type: ignore[type-arg]
    return any(layer["annotations"]["org.opencontainers.image.title"].startswith("a.ext4")
               for layer in manifest["layers"])


def test_collect_names_missing_images_then_passes_and_fetches(
        world: World, client: RegistryClient) -> None:
    run_doit(world.project, env=env(world, push="0")).check()
    assert tags(client, world) == []
    missing = run_doit(world.project, "collect", env=env(world))
    assert missing.returncode != 0
    assert "3 of 3 images are not in the remote cache" in missing.stderr
    assert "a (no entry)" in missing.stderr and "c (no entry)" in missing.stderr
    assert json.loads((world.project / "out/index.json").read_text()) == {}

    (world.project / ".cache/noop.json").unlink(missing_ok=True)
    run_doit(world.project, env=env(world)).check()  # push on: shares what is built
    assert len(tags(client, world)) == 3
    run_doit(world.project, "collect", env=env(world)).check()
    index = json.loads((world.project / "out/index.json").read_text())
    assert list(index) == ["a", "b", "c"]
    local = outputs(world.project)
    assert {f"{n}.ext4": v["sha256"] for n, v in index.items()} == local

    other = fresh(world, "collector")
    mark = len(world.registry.log_text())
    run_doit(other, "collect", "fetch=1", env=env(world)).check()
    assert layer_gets(world, mark) == []
    assert outputs(other) == local


def test_publish_then_pull_back(world: World, client: RegistryClient, tmp_path: Path) -> None:
    target = f"{world.registry.host}/{world.namespace}/published/a:v7"
    world.write_manifest(extra={"a": f'publish = "{target}"\n'})
    run_doit(world.project, env=env(world)).check()
    out = tmp_path / "pulled.ext4"
    assert pull_main([target, str(out)]) == 0
    assert sha256_file(out) == outputs(world.project)["a.ext4"]
    # Published from a cache hit in a fresh directory: the same artifact, nothing uploaded.
    other = fresh(world, "runner2")
    world.write_manifest(extra={"a": f'publish = "{target[:-3]}:v8"\n'})
    shutil.copy(world.project / "images.toml", other / "images.toml")
    mark = len(world.registry.log_text())
    run = run_doit(other, env=env(world)).check()
    assert '"PUT /v2/' + world.namespace + '/published/a/blobs' not in \
        world.registry.log_text()[mark:]
    published = [e["published"] for e in run.events
                 if e.get("event") == "task.done" and "published" in e]
    came = json.loads((other / "out/a.json").read_text())["remote_cache"]["digest"]
    assert published == [f"{target[:-3]}:v8@{came}"]
    assert pull_main([f"{target[:-3]}:v8", str(out)]) == 0
    assert sha256_file(out) == outputs(world.project)["a.ext4"]


def test_two_runners_pushing_the_same_keys_at_once_both_succeed(
        world: World, client: RegistryClient) -> None:
    from tests.harness.doitrun import doit_command, doit_env

    run_doit(world.project, "resolve").check()
    runners = [fresh(world, f"runner{i}") for i in (1, 2)]
    procs = [subprocess.Popen(doit_command(d), cwd=d, env=doit_env(env(world)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in runners]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results[0][1][-3000:] + results[1][1][-3000:]
    assert outputs(runners[0]) == outputs(runners[1])
    assert len(tags(client, world)) == 3
    third = fresh(world, "runner3")
    mark = len(world.registry.log_text())
    run_doit(third, env=env(world)).check()
    assert layer_gets(world, mark) == []
    assert outputs(third) == outputs(runners[0])


def test_an_unreachable_cache_builds_locally_and_a_failed_push_says_so(world: World) -> None:
    from tests.harness.registry import free_port

    gone = {"ROOTFS_REMOTE_CACHE": f"127.0.0.1:{free_port()}/nothing-here"}
    read_only = run_doit(world.project, env={**gone, "ROOTFS_REMOTE_CACHE_PUSH": "0"}).check()
    warnings = [e for e in read_only.events if e.get("event") == "remote.unavailable"]
    assert sorted(e["image"] for e in warnings) == ["a", "b", "c"]
    assert sorted(outputs(world.project)) == ["a.ext4", "b.ext4", "c.ext4"]
    pushing = run_doit(world.project, env=gone)
    assert pushing.returncode == 1
    assert "a is built (" in pushing.stdout and "but its push to the remote cache" in \
        pushing.stdout and "ROOTFS_REMOTE_CACHE_PUSH=0 builds without pushing" in pushing.stdout


def test_publish_without_a_remote_cache_pushes_the_built_image(world: World,
                                                               tmp_path: Path) -> None:
    target = f"{world.registry.host}/{world.namespace}/published/b:v1"
    world.write_manifest(extra={"b": f'publish = "{target}"\n'})
    run = run_doit(world.project).check()
    assert [e["task"] for e in run.events
            if e.get("event") == "task.done" and "published" in e] == ["mkfs:b"]
    out = tmp_path / "pulled.ext4"
    assert pull_main([target, str(out)]) == 0
    assert sha256_file(out) == outputs(world.project)["b.ext4"]
    # Up to date afterwards: a second run publishes nothing again.
    (world.project / ".cache/noop.json").unlink()
    again = run_doit(world.project).check()
    assert not [e for e in again.events if "published" in e]
