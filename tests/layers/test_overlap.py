"""pipeline.layers.overlap: unpacking while the blob downloads, against the real registry.

Faults come from the fault proxy in front of it. Whatever happens to the
download, the end state is one of two: the very store ``unpack_layer`` makes
from the verified blob, or no store at all (and no temporary one) so that the
unpack task does it from the blob.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.base.digest import digest_of, parse_digest
from pipeline.errors import DigestMismatch
from pipeline.layers.limits import Limits
from pipeline.layers.overlap import OverlappedUnpack
from pipeline.layers.store import INDEX_NAME, MARKER_NAME, PACK_NAME, LayerStore
from pipeline.layers.unpack import unpack_layer
from pipeline.oci.resolved import LayerRef
from pipeline.registry.blobcache import BlobCache
from pipeline.registry.client import RegistryClient
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.images import Layer, Member, dir, file, make_layer
from tests.harness.push import push
from tests.harness.registry import Registry

RESET_AT = 1_000_000
"""Bytes of the ~3 MiB blob sent before a reset: mid-blob, after the unpacker started."""
HANG_GUARD_S = 120
"""A fetch that takes this long is a deadlock between download and unpacker."""


def files_layer(seed: str, *, compression: str = "gzip",
                first: list[Member] | None = None) -> Layer:
    """~3 MiB of blob: 48 files of incompressible bytes, so a reset lands mid-stream."""
    rng = random.Random(seed)
    members = [*(first or []), dir("data")]
    members += [file(f"data/f{i:03d}", rng.randbytes(64 << 10), mode=0o644 + (i % 2) * 0o111)
                for i in range(48)]
    return make_layer(members, compression=compression)


@pytest.fixture
def layer(registry: Registry, repo: str) -> Layer:
    found = files_layer(repo)
    push(registry, repo, None, found)
    return found


def descriptor(layer: Layer, diff_id: str | None = None) -> LayerRef:
    return LayerRef(parse_digest(layer.digest), layer.size, layer.media_type,
                    parse_digest(diff_id or layer.diff_id))


def store_state(layers_root: Path) -> dict[str, object]:
    """Everything under the layers root: the stores' index, marker and contents, and temps."""
    found: dict[str, object] = {}
    for store in sorted(layers_root.iterdir()) if layers_root.exists() else []:
        if store.name.startswith("."):
            found[store.name] = "temporary"
            continue
        found[store.name] = {
            "index": (store / INDEX_NAME).read_text(),
            "marker": json.loads((store / MARKER_NAME).read_text()),
            "pack": (store / PACK_NAME).read_bytes(),
            "names": sorted(p.name for p in store.iterdir()),
        }
    return found


def reference_state(layer: Layer, tmp_path: Path) -> dict[str, object]:
    """What unpacking the verified blob from a file gives."""
    blob = tmp_path / "reference-blob"
    blob.write_bytes(layer.data)
    root = tmp_path / "reference-layers"
    unpack_layer(blob, descriptor(layer), root)
    return store_state(root)


def fetch(client: RegistryClient, host: str, repo: str, layer: Layer, tmp_path: Path, *,
          diff_id: str | None = None, buffer_bytes: int | None = None) -> OverlappedUnpack:
    """Fetch ``layer`` with an overlapped unpack, in a thread guarded against a hang."""
    options = {} if buffer_bytes is None else {"buffer_bytes": buffer_bytes}
    tee = OverlappedUnpack(descriptor(layer, diff_id), tmp_path / "layers", limits=Limits(),
                           **options)
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with tee:
                BlobCache(tmp_path / "blobs").fetch(client, host, repo, layer.digest,
                                                    layer.size, tee=tee)
        except BaseException as err:  # noqa: BLE001 - handed to the test
            failure.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(HANG_GUARD_S)
    assert not worker.is_alive(), "the download and the unpacker deadlocked"
    if failure:
        raise failure[0]
    return tee


def blob_gets(proxy: FaultProxy) -> list[tuple[bool, int]]:
    """(resumed with Range, status) per blob GET."""
    return [(r.range is not None, r.status) for r in proxy.requests(method="GET", path="/blobs/")]


def test_a_clean_download_commits_the_store_unpack_layer_makes(
        client: RegistryClient, proxy: FaultProxy, repo: str, layer: Layer,
        tmp_path: Path) -> None:
    tee = fetch(client, proxy.host, repo, layer, tmp_path)
    assert tee.gave_up is None and tee.store is not None
    assert tee.store.root == LayerStore.path_for(tmp_path / "layers", layer.digest)
    assert store_state(tmp_path / "layers") == reference_state(layer, tmp_path)
    assert blob_gets(proxy) == [(False, 200)]


@pytest.mark.parametrize("compression", ["zstd", "none"])
def test_every_compression_overlaps(client: RegistryClient, registry: Registry, repo: str,
                                    tmp_path: Path, compression: str) -> None:
    layer = files_layer(repo, compression=compression)
    push(registry, repo, None, layer)
    tee = fetch(client, registry.host, repo, layer, tmp_path)
    assert tee.gave_up is None
    assert store_state(tmp_path / "layers") == reference_state(layer, tmp_path)


def resets(proxy: FaultProxy, times: int) -> None:
    proxy.add(Fault.reset(after_bytes=RESET_AT), path="/blobs/", times=times)


@pytest.mark.parametrize("faults, gets", [
    pytest.param(lambda p: resets(p, 1), [(False, 200), (True, 206)], id="reset-resumed"),
    pytest.param(lambda p: resets(p, 2), [(False, 200), (True, 206), (True, 206)],
                 id="two-resets-resumed"),
])
def test_a_resumed_download_keeps_feeding_the_unpacker(
        client: RegistryClient, proxy: FaultProxy, repo: str, layer: Layer, tmp_path: Path,
        faults: Callable[[FaultProxy], None], gets: list[tuple[bool, int]]) -> None:
    faults(proxy)
    tee = fetch(client, proxy.host, repo, layer, tmp_path)
    assert tee.gave_up is None and tee.store is not None
    assert store_state(tmp_path / "layers") == reference_state(layer, tmp_path)
    assert blob_gets(proxy) == gets


@pytest.mark.parametrize("faults, gets", [
    pytest.param(lambda p, layer: (resets(p, 1), p.add(Fault.body(
        layer.data, headers={"Content-Type": "application/octet-stream"}), path="/blobs/",
        nth=2)), [(False, 200), (True, 200)], id="resume-answered-200"),
    pytest.param(lambda p, layer: (resets(p, 1), p.add(Fault.headers(
        content_range=f"bytes 5-{layer.size - 1}/{layer.size}"), path="/blobs/", nth=2)),
        [(False, 200), (True, 206), (False, 200)], id="resume-at-the-wrong-offset"),
    pytest.param(lambda p, layer: (resets(p, 1), p.add(Fault.corrupt(offset=10), path="/blobs/",
                                                       nth=2)),
                 [(False, 200), (True, 206), (False, 200)], id="spliced-blob-fails-digest"),
])
def test_a_download_that_starts_over_gives_up_the_overlap(
        client: RegistryClient, proxy: FaultProxy, repo: str, layer: Layer, tmp_path: Path,
        faults: Callable[[FaultProxy, Layer], None], gets: list[tuple[bool, int]]) -> None:
    faults(proxy, layer)
    tee = fetch(client, proxy.host, repo, layer, tmp_path)
    assert tee.gave_up == "the download started over from byte 0" and tee.store is None
    assert store_state(tmp_path / "layers") == {}
    assert (tmp_path / "blobs/sha256" / layer.digest.split(":")[1]).read_bytes() == layer.data
    assert blob_gets(proxy) == gets


@pytest.mark.parametrize("faults", [
    pytest.param(lambda p: p.add(Fault.corrupt(), path="/blobs/", times=None), id="wrong-bytes"),
    # Byte 4 is the gzip header's mtime (RFC 1952 2.3): the tar inside, and so the
    # diff_id, stay right; only the blob digest tells these bytes are not the blob.
    pytest.param(lambda p: p.add(Fault.corrupt(offset=4), path="/blobs/", times=None),
                 id="wrong-bytes-right-tar"),
    pytest.param(lambda p: (resets(p, 1), p.add(Fault.corrupt(offset=10), path="/blobs/",
                                                nth=2, times=None)), id="wrong-bytes-resumed"),
])
def test_wrong_bytes_never_reach_a_store(client: RegistryClient, proxy: FaultProxy, repo: str,
                                         layer: Layer, tmp_path: Path,
                                         faults: Callable[[FaultProxy], None]) -> None:
    faults(proxy)
    with pytest.raises(DigestMismatch):
        fetch(client, proxy.host, repo, layer, tmp_path)
    assert store_state(tmp_path / "layers") == {}
    assert not (tmp_path / "blobs/sha256" / layer.digest.split(":")[1]).exists()


def test_a_wrong_diff_id_gives_up_and_leaves_nothing(client: RegistryClient, registry: Registry,
                                                     repo: str, layer: Layer,
                                                     tmp_path: Path) -> None:
    wrong = str(digest_of(b"another tar"))
    tee = fetch(client, registry.host, repo, layer, tmp_path, diff_id=wrong)
    assert tee.store is None
    assert tee.gave_up == (f"the unpacker failed: layer {layer.digest} uncompressed (diff_id):"
                           f" expected {wrong}, got {layer.diff_id}")
    assert store_state(tmp_path / "layers") == {}


def test_an_unpacker_failing_early_lets_the_download_finish(
        client: RegistryClient, registry: Registry, repo: str, tmp_path: Path) -> None:
    # The first member is refused at once; 3 MiB still arrive after it, more than
    # a small queue holds, so the download must not wait for an unpacker that quit.
    layer = files_layer(repo, first=[file("../escape", b"x")])
    push(registry, repo, None, layer)
    tee = fetch(client, registry.host, repo, layer, tmp_path, buffer_bytes=64 << 10)
    assert tee.store is None and (tee.gave_up or "").startswith("the unpacker failed: ")
    assert "../escape" in (tee.gave_up or "")
    assert store_state(tmp_path / "layers") == {}
    assert (tmp_path / "blobs/sha256" / layer.digest.split(":")[1]).read_bytes() == layer.data


def test_a_blob_already_cached_is_not_unpacked_here(client: RegistryClient, registry: Registry,
                                                    repo: str, layer: Layer,
                                                    tmp_path: Path) -> None:
    BlobCache(tmp_path / "blobs").fetch(client, registry.host, repo, layer.digest, layer.size)
    tee = fetch(client, registry.host, repo, layer, tmp_path)
    assert (tee.store, tee.gave_up) == (None, "the blob was already in the cache")
    assert store_state(tmp_path / "layers") == {}


def test_bytes_out_of_order_give_up(tmp_path: Path) -> None:
    layer = files_layer("order", compression="none")
    with OverlappedUnpack(descriptor(layer), tmp_path / "layers", limits=Limits()) as tee:
        tee.feed(0, layer.data[:4096])
        tee.feed(0, layer.data[:4096])  # another source, from the start
        tee.feed(4096, layer.data[4096:8192])
        tee.verified()
    assert tee.store is None
    assert tee.gave_up == ("bytes arrived at offset 0, the unpacker is at 4096 (the download"
                           " started over)")
    assert store_state(tmp_path / "layers") == {}


def test_without_verified_nothing_is_committed(tmp_path: Path) -> None:
    # Every byte of a good layer arrived, but the download failed before the blob
    # cache said "verified": the unpacker never sees the end of its input.
    layer = files_layer("failed", compression="none")
    tee = OverlappedUnpack(descriptor(layer), tmp_path / "layers", limits=Limits())
    with pytest.raises(KeyboardInterrupt), tee:
        for at in range(0, layer.size, 65536):
            tee.feed(at, layer.data[at:at + 65536])
        raise KeyboardInterrupt
    assert (tee.store, tee.gave_up) == (None, "the download failed: KeyboardInterrupt")
    assert store_state(tmp_path / "layers") == {}
