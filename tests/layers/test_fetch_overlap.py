"""End to end: fetch tasks that unpack while downloading, through the fault proxy.

The real doit, the real registry behind the fault proxy, real e2fsprogs.
Whatever the download goes through, a run ends with the layer stores
``unpack_layer`` makes from the verified blobs and the ext4 images a run
without any overlap makes; wrong bytes never reach a store.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.base.digest import parse_digest
from pipeline.layers.store import INDEX_NAME, MARKER_NAME, PACK_NAME
from pipeline.layers.unpack import unpack_layer
from pipeline.oci.resolved import LayerRef
from tests.harness.doitrun import make_world, run_doit, sha256_file, verify_outputs
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.images import Layer
from tests.harness.registry import Registry

# End to end with real tools: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow

BIG = 3 << 20
"""Bytes of incompressible data in image a's top layer: a reset at 1 MB is mid-blob."""


def overlaps(run) -> dict[str, str]:  # type: ignore[no-untyped-def]
    """What each fetch task's overlapped unpack did, by digest."""
    return {e["digest"]: e["overlap"] for e in run.events
            if e.get("event") == "task.done" and "overlap" in e}


def store_digest(store: Path) -> str:
    """One hash over a layer store's index, marker and content pack."""
    h = hashlib.sha256()
    for path in [store / INDEX_NAME, store / MARKER_NAME, store / PACK_NAME]:
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def layer_stores(project: Path) -> dict[str, str]:
    root = project / ".cache/layers"
    return {p.name: "temporary" if p.name.startswith(".") else store_digest(p)
            for p in sorted(root.iterdir())} if root.exists() else {}


def reference_store(layer: Layer, tmp_path: Path) -> str:
    """The store ``unpack_layer`` makes from the blob file."""
    work = tmp_path / "reference" / layer.digest.split(":")[1]
    work.mkdir(parents=True)
    blob = work / "blob"
    blob.write_bytes(layer.data)
    ref = LayerRef(parse_digest(layer.digest), layer.size, layer.media_type,
                   parse_digest(layer.diff_id))
    return store_digest(unpack_layer(blob, ref, work / "layers").root)


def images(project: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted((project / "out").glob("*.ext4"))}


def test_a_cold_build_unpacks_while_fetching_and_matches_a_build_from_the_blobs(
        registry: Registry, repo: str, tmp_path: Path) -> None:
    world = make_world(registry, repo, tmp_path, names="ab", big=BIG)
    layers = [world.base, *world.tops.values()]
    cold = run_doit(world.project).check()
    assert overlaps(cold) == {x.digest: "unpacked" for x in layers}
    stores, built = layer_stores(world.project), images(world.project)
    assert stores == {x.digest.split(":")[1]: reference_store(x, tmp_path) for x in layers}
    # The same project without the overlap: the blobs are cached, so the unpack
    # tasks read them from disk. Stores and images come out byte for byte the same.
    for name in ("layers", "flat"):
        shutil.rmtree(world.project / ".cache" / name)
    shutil.rmtree(world.project / "out")
    again = run_doit(world.project).check()
    assert overlaps(again) == {} and not any(t.startswith("fetch-blob:") for t in again.ran)
    assert sorted(t for t in again.ran if t.startswith("unpack:")) == sorted(
        f"unpack:{x.digest}" for x in layers)
    assert (layer_stores(world.project), images(world.project)) == (stores, built)
    verify_outputs(world.project, "ab")


def reset(proxy: FaultProxy, big: Layer) -> None:
    proxy.add(Fault.reset(after_bytes=1_000_000), path=big.digest)


def restart(proxy: FaultProxy, big: Layer) -> None:
    reset(proxy, big)
    proxy.add(Fault.body(big.data, headers={"Content-Type": "application/octet-stream"}),
              path=big.digest, nth=2)


@pytest.mark.parametrize("faults, overlap, ranges", [
    pytest.param(reset, "unpacked", 1, id="reset-resumed-keeps-unpacking"),
    pytest.param(restart, "gave up (the download started over from byte 0); the unpack task"
                 " reads the blob", 1, id="restart-from-zero-gives-up"),
])
def test_faults_mid_blob_end_with_the_same_stores(
        registry: Registry, repo: str, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy], faults: Callable[[FaultProxy, Layer], None],
        overlap: str, ranges: int) -> None:
    proxy = fault_proxy()
    world = make_world(registry, repo, tmp_path, names="ab", big=BIG, host=proxy.host)
    big = world.tops["a"]
    faults(proxy, big)
    run = run_doit(world.project).check()
    assert overlaps(run)[big.digest] == overlap
    assert len([r for r in proxy.requests(method="GET", path=big.digest) if r.range]) == ranges
    unpack = [e for e in run.events if e.get("task") == f"unpack:{big.digest}"
              and e.get("event") == "task.done"]
    assert len(unpack) == 1 and unpack[0]["entries"] == 2
    big_hex = big.digest.split(":")[1]
    assert layer_stores(world.project)[big_hex] == reference_store(big, tmp_path)
    verify_outputs(world.project, "ab")


def test_wrong_bytes_fail_the_fetch_commit_no_store_and_the_next_run_recovers(
        registry: Registry, repo: str, tmp_path: Path,
        fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy()
    world = make_world(registry, repo, tmp_path, names="ab", big=BIG, host=proxy.host)
    big = world.tops["a"]
    # Byte 4 is the gzip header's mtime (RFC 1952 2.3): the tar inside, and its diff_id,
    # are right, so only the blob digest stands between these bytes and a store.
    proxy.add(Fault.corrupt(offset=4), path=big.digest, times=None)
    bad = run_doit(world.project, "--continue")
    assert bad.returncode != 0
    assert bad.failed == [f"fetch-blob:{big.digest}"]
    assert f"FAILED fetch-blob:{big.digest} (a): blob {big.digest} from " in bad.stdout
    big_hex = big.digest.split(":")[1]
    stores = layer_stores(world.project)
    assert big_hex not in stores and "temporary" not in stores.values()
    assert not world.blob(big).exists()
    verify_outputs(world.project, "b")
    proxy.clear()
    good = run_doit(world.project).check()
    assert overlaps(good) == {big.digest: "unpacked"}
    assert layer_stores(world.project)[big_hex] == reference_store(big, tmp_path)
    verify_outputs(world.project, "ab")
    assert json.loads((world.project / "out/a.json").read_text())["layers"][1]["digest"] \
        == big.digest
