"""End to end: the same image from the registry and from skopeo's oci:, oci-archive: and
docker-archive: copies of it builds byte-identical ext4 images; the lock follows the files.

The local copies are made by the real skopeo from the real registry, so the
archives are what users have, not what we think they look like.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness.doitrun import (
    World,
    make_world,
    run_doit,
    sha256_file,
    top_layer,
    verify_outputs,
)
from tests.harness.registry import Registry
from tests.tasks.test_tasks import heavy_loaded

pytestmark = pytest.mark.slow

SKOPEO = shutil.which("skopeo")


def skopeo_copy(source: str, destination: str) -> None:
    assert SKOPEO is not None, "skopeo is installed by scripts/test.sh"
    done = subprocess.run([SKOPEO, "copy", "--quiet", "--src-tls-verify=false",
                           "--dest-tls-verify=false", source, destination],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


def export(world: World, name: str, tag: str = "v1") -> dict[str, str]:
    """skopeo copies of image ``name`` into the project; the local refs that name them."""
    source = f"docker://{world.ref(name, tag)}"
    project = world.project
    skopeo_copy(source, f"oci:{project}/layout:{tag}")
    skopeo_copy(source, f"oci-archive:{project}/image.tar:{tag}")
    (project / "docker.tar").unlink(missing_ok=True)
    skopeo_copy(source, f"docker-archive:{project}/docker.tar:{world.ref(name, tag)}")
    return {"oci": f"oci:layout:{tag}", "ociarchive": f"oci-archive:image.tar:{tag}",
            "dockerarchive": f"docker-archive:docker.tar:{world.ref(name, tag)}"}


def write_manifest(world: World, refs: dict[str, str]) -> None:
    text = "".join(f'[images.{name}]\nref = "{ref}"\n' for name, ref in sorted(refs.items()))
    (world.project / "images.toml").write_text(text)


@pytest.fixture
def world(registry: Registry, repo: str, tmp_path: Path) -> World:
    return make_world(registry, repo, tmp_path, names="a")


def test_every_local_source_builds_the_registry_image_byte_for_byte(world: World) -> None:
    refs = {"registry": world.ref("a"), **export(world, "a")}
    write_manifest(world, refs)
    run_doit(world.project).check()
    verify_outputs(world.project, refs)
    hashes = {name: sha256_file(world.project / f"out/{name}.ext4") for name in refs}
    assert len(set(hashes.values())) == 1, hashes
    lock = json.loads((world.project / "images.lock.json").read_text())["images"]
    assert lock["oci"]["resolved"]["source"]["kind"] == "oci"
    assert lock["oci"]["resolved"]["source"]["path"] == "layout"
    assert lock["dockerarchive"]["resolved"]["source"]["kind"] == "docker-archive"
    assert "registry" not in lock["ociarchive"]["resolved"]
    assert lock["registry"]["resolved"]["manifest_digest"] == lock["oci"]["resolved"][
        "manifest_digest"]


def test_an_unchanged_source_reads_no_blob_and_a_changed_one_is_resolved_and_rebuilt(
        world: World) -> None:
    refs = export(world, "a")
    write_manifest(world, refs)
    run_doit(world.project).check()
    before = {name: sha256_file(world.project / f"out/{name}.ext4") for name in refs}
    lock = world.project / "images.lock.json"
    locked = lock.read_bytes()

    noop = run_doit(world.project, audit=True).check()
    assert noop.ran == []
    # The no-op stamp watches the layout's index.json (and each archive) by size and
    # mtime: nothing in the source is even opened.
    assert noop.opened(world.project / "layout") == []
    # Nor is anything a working step needs imported: no network client, no builder.
    assert heavy_loaded(noop.modules) == []
    assert run_doit(world.project, "frozen=1").check().ran == []
    update = run_doit(world.project, "update").check()
    assert update.ran == ["update"] and lock.read_bytes() == locked

    # A new build of the image, saved over the old files: every source moved.
    world.push("a", "v1", top_layer("a", "2"))
    export(world, "a")
    stale = run_doit(world.project, "frozen=1")
    assert stale.returncode == 3
    assert "frozen mode: image 'dockerarchive' is stale: 'docker-archive:docker.tar:" in (
        stale.stderr)
    rebuilt = run_doit(world.project).check()
    assert sorted(t for t in rebuilt.ran if t.startswith(("resolve:", "mkfs:"))) == sorted(
        [f"resolve:{n}" for n in refs] + [f"mkfs:{n}" for n in refs])
    after = {name: sha256_file(world.project / f"out/{name}.ext4") for name in refs}
    assert len(set(after.values())) == 1 and set(after.values()) != set(before.values())
    assert run_doit(world.project).check().ran == []


def test_a_missing_archive_is_one_clear_error(world: World) -> None:
    write_manifest(world, {"gone": "oci-archive:nowhere.tar:v1"})
    run = run_doit(world.project)
    assert run.returncode != 0 and run.failed == ["resolve:gone"]
    assert (f"archive '{world.project / 'nowhere.tar'}' does not exist; check the path "
            "(relative paths are relative to images.toml)") in run.stderr + run.stdout


def test_an_mkfs_image_is_byte_identical_from_a_docker_archive_too(world: World) -> None:
    # The mkfs builder seeds by content (the diff_ids), not by the blob digests a
    # docker-archive (uncompressed layers) and a registry (gzipped) disagree on.
    refs = {"registry": world.ref("a"), **export(world, "a")}
    write_manifest(world, refs)
    manifest = world.project / "images.toml"
    manifest.write_text('[settings]\nbuilder = "mkfs"\n' + manifest.read_text())
    with open(manifest, "a") as f:
        # config_path on top of the same layers: the file is there.
        f.write(f'[images.configured]\nref = "{world.ref("a")}"\n'
                'config_path = "/etc/rootfs/config.json"\n')
    run_doit(world.project).check()
    verify_outputs(world.project, [*refs, "configured"])
    records = {n: json.loads((world.project / f"out/{n}.json").read_text()) for n in refs}
    assert {r["options"]["builder"] for r in records.values()} == {"mkfs"}
    assert len({r["sha256"] for r in records.values()}) == 1, records
    configured = json.loads((world.project / "out/configured.json").read_text())
    shown = subprocess.run(["debugfs", "-R", "cat /etc/rootfs/config.json",
                            str(world.project / "out/configured.ext4")],
                           capture_output=True, text=True, check=True).stdout
    assert json.loads(shown) == configured["runtime"]


def test_a_lost_cache_is_refilled_from_the_local_sources_alone(world: World) -> None:
    refs = export(world, "a")
    write_manifest(world, refs)
    run_doit(world.project).check()
    before = {name: sha256_file(world.project / f"out/{name}.ext4") for name in refs}
    shutil.rmtree(world.project / ".cache")
    shutil.rmtree(world.project / "out")
    # The committed lock is current, so nothing is resolved; blobs and configs are copied
    # (verified) from the layout and archives, never asked of a registry.
    again = run_doit(world.project, "frozen=1", audit=True).check()
    assert not [t for t in again.ran if t.startswith("resolve:")]
    assert again.connects == []
    assert {name: sha256_file(world.project / f"out/{name}.ext4") for name in refs} == before
