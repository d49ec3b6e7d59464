"""Registry mirrors: the default manifest through a CI mirror, and every way a mirror fails.

A mirror serves the same repository names as the registry it mirrors. It is
tried first; when it is down, lacks the image or serves wrong bytes, the
next source is asked (in the end the registry itself), with one log line per
fallback, and every digest is verified whoever served it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.project.config import load_manifest
from tests.harness.doitrun import REPO, World, make_world, run_doit, verify_outputs
from tests.harness.faultproxy import Fault
from tests.harness.images import dir, file, make_image, make_index, make_layer
from tests.harness.push import push
from tests.harness.registry import Registry, free_port, start_registry

# End to end with real tools: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow

FALLBACK = "source.fallback"


def test_default_manifest_builds_from_a_mirror_named_only_in_the_environment(
        tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(REPO / "images.toml", project / "images.toml")
    manifest = load_manifest(project / "images.toml")
    assert manifest.images and all(s.ref.registry == "docker.io" for s in manifest.images)
    with start_registry(tmp_path / "mirror") as mirror:
        base = make_layer([dir("etc"), file("etc/os-release", b"ID=mirrored\n")])
        for spec in manifest.images:
            top = make_layer([dir("etc"), file(f"etc/{spec.name}", spec.ref_text.encode())])
            amd64 = make_image([base, top], architecture="amd64")
            arm64 = make_image([base, top], architecture="arm64")
            push(mirror, spec.ref.repository, spec.ref.tag,
                 make_index([amd64, arm64], attestation=True))
        run = run_doit(project, env={"ROOTFS_MIRRORS": f"docker.io={mirror.host}"},
                       audit=True).check()
    assert (project / "images.toml").read_bytes() == (REPO / "images.toml").read_bytes()
    assert sorted(t for t in run.ran if t.startswith("mkfs:")) == sorted(
        f"mkfs:{s.name}" for s in manifest.images)
    assert run.connects and all(c == repr(("127.0.0.1", mirror.port)) for c in run.connects)
    assert [e for e in run.events if e.get("event") == FALLBACK] == []
    lock = json.loads((project / "images.lock.json").read_text())["images"]
    for spec in manifest.images:
        resolved = lock[spec.name]["resolved"]
        # The lock names the upstream, so it works with or without the mirror.
        assert (resolved["registry"], resolved["repository"]) == ("docker.io",
                                                                  spec.ref.repository)
        assert resolved["platform"] == "linux/amd64"
    verify_outputs(project, [s.name for s in manifest.images])


def fallbacks(run) -> list[tuple[str, str, str]]:  # type: ignore[no-untyped-def]
    return [(e["task"], e["source"].split("/")[0], e["next"].split("/")[0])
            for e in run.events if e.get("event") == FALLBACK]


def network_tasks(world: World) -> list[str]:
    return sorted([f"resolve:{n}" for n in world.tops]
                  + [f"fetch-blob:{x.digest}" for x in (world.base, *world.tops.values())])


def test_down_and_empty_mirrors_fall_back_in_order_with_one_line_each(
        registry: Registry, repo: str, tmp_path: Path) -> None:
    world = make_world(registry, repo, tmp_path, names="ab")
    dead = f"127.0.0.1:{free_port()}"
    with start_registry(tmp_path / "empty") as empty:
        env = {"ROOTFS_MIRRORS": f"{registry.host}={dead},{empty.host}"}
        run = run_doit(world.project, env=env).check()
    verify_outputs(world.project, "ab")
    found = fallbacks(run)
    # Each task that needed the network: the dead mirror, then the empty one, then upstream.
    assert sorted(found) == sorted(
        [(task, dead, empty.host) for task in network_tasks(world)]
        + [(task, empty.host, registry.host) for task in network_tasks(world)])
    errors = {e["source"].split("/")[0]: e["error"] for e in run.events
              if e.get("event") == FALLBACK and e["task"] == "resolve:a"}
    assert "ConnectError" in errors[dead]
    assert "404 Not Found" in errors[empty.host]
    assert [e for e in run.events if e.get("event") == "registry.retry"] == []


def test_a_mirror_serving_wrong_bytes_is_caught_and_skipped(
        registry: Registry, repo: str, tmp_path: Path, fault_proxy) -> None:  # type: ignore[no-untyped-def]
    world = make_world(registry, repo, tmp_path, names="ab")
    proxy = fault_proxy(registry)
    proxy.add(Fault.corrupt(), path="/blobs/sha256:", times=1000)
    run = run_doit(world.project, env={"ROOTFS_MIRRORS": f"{registry.host}={proxy.host}"})
    run.check()
    verify_outputs(world.project, "ab")
    corrupt = [e for e in run.events if e.get("event") == FALLBACK]
    assert corrupt and all(e["source"].startswith(proxy.host) for e in corrupt)
    assert all("expected sha256:" in e["error"] for e in corrupt)
    assert {e["task"] for e in corrupt} >= {f"fetch-blob:{x.digest}"
                                            for x in (world.base, *world.tops.values())}
    for layer in (world.base, *world.tops.values()):
        assert world.blob(layer).exists()


def test_a_failing_mirror_with_no_upstream_left_fails_with_the_upstream_error(
        registry: Registry, repo: str, tmp_path: Path) -> None:
    world = make_world(registry, repo, tmp_path, names="a")
    missing = f"{world.registry.host}/{world.namespace}/a:nope"
    world.write_manifest(a=missing)
    with start_registry(tmp_path / "empty") as empty:
        run = run_doit(world.project, env={"ROOTFS_MIRRORS": f"{registry.host}={empty.host}"})
    assert run.returncode != 0
    assert run.stdout.splitlines()[0].startswith(
        f"FAILED resolve:a (a): GET http://{registry.host}/v2/{world.namespace}/a/manifests/"
        "nope: 404 Not Found")
    assert fallbacks(run) == [("resolve:a", empty.host, registry.host)]


@pytest.mark.parametrize("value, message", [
    pytest.param("docker.io", "entry 'docker.io' is not 'registry=mirror[,mirror...]', e.g. "
                 "'docker.io=mirror.internal:5000'", id="no-equals"),
    pytest.param("docker.io=https://m:5000", "host 'https://m:5000' in entry "
                 "'docker.io=https://m:5000': give a host[:port] without a scheme (plain HTTP "
                 "is the `insecure` setting)", id="scheme"),
])
def test_a_malformed_mirror_variable_is_one_error_line(tmp_path: Path, value: str,
                                                        message: str) -> None:
    (tmp_path / "images.toml").write_text('[images.a]\nref = "alpine:3.20"\n')
    run = run_doit(tmp_path, env={"ROOTFS_MIRRORS": value})
    assert (run.returncode, run.stderr) == (
        3, f"ERROR: environment variable ROOTFS_MIRRORS: {message}\n")
