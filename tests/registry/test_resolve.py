"""resolve_image against the real registry: indexes, attestations, flavours, refusals, lock JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.base.digest import parse_digest
from pipeline.errors import BadImage, DigestMismatch, LockError, PlatformNotFound
from pipeline.oci import mediatypes as mt
from pipeline.oci.platform import DEFAULT_PLATFORM, Platform, parse_platform
from pipeline.oci.reference import parse_reference
from pipeline.registry.blobcache import BlobCache
from pipeline.registry.client import RegistryClient
from pipeline.registry.resolve import BlobRef, LayerRef, ResolvedImage, head_digest, resolve_image
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.images import Image, Index, dir, file, make_image, make_index, make_layer
from tests.harness.push import push, push_manifest
from tests.harness.registry import Registry


@pytest.fixture
def blobs(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "blobs")


def layers(tag: str) -> list:  # type: ignore[type-arg]
    return [make_layer([dir("etc"), file("etc/os", tag.encode())]),
            make_layer([file("zstd", b"z" * 100)], compression="zstd"),
            make_layer([file("plain", b"p")], compression="none")]


def expected(image: Image, *, oci: bool = True) -> tuple[LayerRef, ...]:
    return tuple(LayerRef(parse_digest(layer.digest), layer.size, layer.media_type_for(oci=oci),
                          parse_digest(layer.diff_id)) for layer in image.layers)


@pytest.fixture
def multi(registry: Registry, repo: str) -> Index:
    """amd64, arm64/v8, arm/v7 and arm/v6 images with BuildKit attestations."""
    images = [make_image(layers("amd64")),
              make_image(layers("arm64"), architecture="arm64", variant="v8"),
              make_image(layers("armv7"), architecture="arm", variant="v7"),
              make_image(layers("armv6"), architecture="arm", variant="v6")]
    index = make_index(images, attestation=True)
    push(registry, repo, "multi", index)
    return index


@pytest.mark.parametrize("wanted, chosen", [
    ("linux/amd64", ("amd64", None)),
    ("linux/arm64", ("arm64", "v8")),
    ("linux/aarch64", ("arm64", "v8")),
    ("linux/arm/v7", ("arm", "v7")),
    ("linux/arm/v6", ("arm", "v6")),
    ("linux/armhf", ("arm", "v7")),
], ids=lambda v: v if isinstance(v, str) else "/".join(filter(None, v)))
def test_multi_platform_index_with_attestations(client: RegistryClient, registry: Registry,
                                                repo: str, multi: Index, blobs: BlobCache,
                                                wanted: str, chosen: tuple[str, str | None]
                                                ) -> None:
    ref = parse_reference(f"{registry.host}/{repo}:multi")
    got = resolve_image(client, ref, parse_platform(wanted), blobs)
    image = multi.image_for("linux", *chosen)
    assert got == ResolvedImage(
        ref=ref, registry=registry.host, repository=repo,
        platform=Platform.of("linux", *chosen), index_digest=parse_digest(multi.digest),
        manifest_digest=parse_digest(image.digest),
        config=BlobRef(parse_digest(image.config.digest), image.config.size, mt.OCI_CONFIG),
        layers=expected(image))
    assert blobs.has(image.config.digest)  # the config went through the verifying cache
    assert got.pinned == ref.with_digest(parse_digest(multi.digest))


def test_platform_not_offered_lists_the_offer(client: RegistryClient, registry: Registry,
                                              repo: str, multi: Index, blobs: BlobCache) -> None:
    ref = parse_reference(f"{registry.host}/{repo}:multi")
    with pytest.raises(PlatformNotFound) as info:
        resolve_image(client, ref, parse_platform("linux/s390x"), blobs)
    assert str(info.value) == (f"{ref} has no image for platform linux/s390x; it offers:"
                               " linux/amd64, linux/arm/v6, linux/arm/v7, linux/arm64 (set"
                               " `platform` for this image in images.toml)")


def test_only_attestations_for_a_platform_never_selected(client: RegistryClient,
                                                         registry: Registry, repo: str,
                                                         blobs: BlobCache) -> None:
    amd = make_image(layers("a"))
    index = make_index([amd], attestation=True)
    push(registry, repo, "x", index)
    with pytest.raises(PlatformNotFound) as info:
        resolve_image(client, parse_reference(f"{registry.host}/{repo}:x"),
                      Platform("unknown", "unknown"), blobs)
    assert info.value.offered == ["linux/amd64"]


def test_pull_index_by_digest(client: RegistryClient, registry: Registry, repo: str,
                              multi: Index, blobs: BlobCache) -> None:
    ref = parse_reference(f"{registry.host}/{repo}@{multi.digest}")
    got = resolve_image(client, ref, DEFAULT_PLATFORM, blobs)
    assert got.index_digest == parse_digest(multi.digest)
    assert got.manifest_digest == parse_digest(multi.image_for("linux", "amd64").digest)


def test_docker_manifest_list(client: RegistryClient, registry: Registry, repo: str,
                              blobs: BlobCache) -> None:
    images = [make_image(layers("d-amd64"), oci=False),
              make_image(layers("d-arm"), architecture="arm", oci=False)]
    index = make_index(images, oci=False)
    push(registry, repo, "docker", index)
    ref = parse_reference(f"{registry.host}/{repo}:docker")
    got = resolve_image(client, ref, parse_platform("linux/arm/v7"), blobs)
    arm = images[1]
    assert got.platform == Platform("linux", "arm", "v7")  # "arm" alone means v7
    assert got.manifest_digest == parse_digest(arm.digest)
    assert got.config.media_type == mt.DOCKER_CONFIG
    assert got.layers == expected(arm, oci=False)
    assert [layer.compression for layer in got.layers] == ["gzip", "zstd", "none"]


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_single_platform_image(client: RegistryClient, registry: Registry, repo: str,
                               blobs: BlobCache, oci: bool) -> None:
    image = make_image(layers("single"), oci=oci)
    push(registry, repo, "one", image)
    ref = parse_reference(f"{registry.host}/{repo}:one")
    got = resolve_image(client, ref, DEFAULT_PLATFORM, blobs)
    assert got.index_digest is None
    assert got.manifest_digest == parse_digest(image.digest)
    assert got.platform == DEFAULT_PLATFORM
    assert got.layers == expected(image, oci=oci)
    assert got.pinned.digest == parse_digest(image.digest)


def test_single_platform_image_for_another_platform(client: RegistryClient, registry: Registry,
                                                    repo: str, blobs: BlobCache) -> None:
    image = make_image(layers("arm"), architecture="arm64")
    push(registry, repo, "arm", image)
    with pytest.raises(PlatformNotFound) as info:
        resolve_image(client, parse_reference(f"{registry.host}/{repo}:arm"),
                      DEFAULT_PLATFORM, blobs)
    assert info.value.offered == ["linux/arm64"]


def push_image(registry: Registry, repo: str, image: Image) -> str:
    push(registry, repo, "bad", image)
    return f"{registry.host}/{repo}:bad"


REFUSED: list[tuple[str, Callable[[], Image], str]] = [
    ("diff-id-count", lambda: make_image(layers("x"), diff_ids=["sha256:" + "0" * 64]),
     "the manifest has 3 layers but the config lists 1 diff_ids; the image is corrupt"),
    ("foreign-layer", lambda: make_image([make_layer(
        [file("f", b"w")],
        media_type="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")]),
     "is a foreign (non-distributable) layer (application/vnd.docker.image.rootfs.foreign.diff"
     ".tar.gzip) whose bytes live outside the registry; such images (Windows base layers)"
     " cannot become a root filesystem"),
    ("nondistributable-oci", lambda: make_image([make_layer(
        [file("f", b"w")], media_type="application/vnd.oci.image.layer.nondistributable.v1.tar"
                                      "+gzip")]),
     "is a foreign (non-distributable) layer (application/vnd.oci.image.layer.nondistributable"
     ".v1.tar+gzip) whose bytes live outside the registry"),
    ("unknown-layer-type", lambda: make_image([make_layer(
        [file("f", b"w")], media_type="application/vnd.example.layer.v1+squashfs")]),
     "has media type 'application/vnd.example.layer.v1+squashfs'; supported: plain, gzip and"
     " zstd tar layers (OCI and Docker types)"),
    ("helm-chart", lambda: make_image(layers("h"),
                                      config_media_type="application/vnd.cncf.helm.config.v1+json"),
     "is an OCI artifact (config media type 'application/vnd.cncf.helm.config.v1+json'), not a"
     " container image; point the reference at an image"),
]


@pytest.mark.parametrize("build, message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_images(client: RegistryClient, registry: Registry, repo: str,
                        blobs: BlobCache, build: Callable[[], Image], message: str) -> None:
    ref = push_image(registry, repo, build())
    with pytest.raises(BadImage) as info:
        resolve_image(client, parse_reference(ref), DEFAULT_PLATFORM, blobs)
    assert message in str(info.value)
    assert str(info.value).startswith(f"{ref}: ")


def test_index_entry_contradicted_by_config(client: RegistryClient, registry: Registry,
                                            repo: str, blobs: BlobCache) -> None:
    amd = make_image(layers("liar"))
    entry = {**amd.descriptor(), "platform": {"os": "linux", "architecture": "arm64"}}
    index = make_index([], extra_entries=[entry])
    push(registry, repo, None, amd)
    push_manifest(registry, repo, "liar", index.manifest, index.media_type)
    with pytest.raises(BadImage) as info:
        resolve_image(client, parse_reference(f"{registry.host}/{repo}:liar"),
                      parse_platform("linux/arm64"), blobs)
    assert str(info.value) == (
        f"{registry.host}/{repo}:liar: the index lists this manifest as"
        " linux/arm64 but its config says linux/amd64; refusing an image that contradicts its"
        " index")


@pytest.fixture
def proxied(fault_proxy: Callable[..., FaultProxy], registry: Registry, repo: str
            ) -> tuple[FaultProxy, Image]:
    image = make_image(layers("p"))
    push(registry, repo, "p", image)
    return fault_proxy(), image


def test_content_type_confusion_refused(client: RegistryClient, repo: str, blobs: BlobCache,
                                        proxied: tuple[FaultProxy, Image]) -> None:
    proxy, _ = proxied
    proxy.add(Fault.headers(content_type=mt.OCI_INDEX), path="/manifests/")
    with pytest.raises(BadImage, match="refusing an ambiguous manifest"):
        resolve_image(client, parse_reference(f"{proxy.host}/{repo}:p"), DEFAULT_PLATFORM, blobs)


def test_schema1_refused(client: RegistryClient, repo: str, blobs: BlobCache,
                         proxied: tuple[FaultProxy, Image]) -> None:
    proxy, _ = proxied
    schema1 = json.dumps({"schemaVersion": 1, "name": repo, "tag": "p", "fsLayers": []}).encode()
    proxy.add(Fault.body(schema1, headers={"Content-Type": mt.DOCKER_SCHEMA1_SIGNED}),
              path="/manifests/")
    with pytest.raises(BadImage, match="is a Docker schema 1 manifest"):
        resolve_image(client, parse_reference(f"{proxy.host}/{repo}:p"), DEFAULT_PLATFORM, blobs)


def test_lying_docker_content_digest(client: RegistryClient, repo: str, blobs: BlobCache,
                                     proxied: tuple[FaultProxy, Image]) -> None:
    proxy, image = proxied
    proxy.add(Fault.headers(docker_content_digest="sha256:" + "e" * 64), path="/manifests/")
    with pytest.raises(DigestMismatch) as err:
        resolve_image(client, parse_reference(f"{proxy.host}/{repo}:p"), DEFAULT_PLATFORM, blobs)
    assert str(err.value).endswith(
        f"/manifests/p: manifest vs. Docker-Content-Digest: expected sha256:{'e' * 64}, "
        f"got {image.digest}")


def test_tampered_config_blob(client: RegistryClient, repo: str, blobs: BlobCache,
                              proxied: tuple[FaultProxy, Image]) -> None:
    proxy, image = proxied
    proxy.add(Fault.corrupt(), path="/blobs/", times=None)
    with pytest.raises(DigestMismatch) as err:
        resolve_image(client, parse_reference(f"{proxy.host}/{repo}:p"), DEFAULT_PLATFORM, blobs)
    assert str(err.value).startswith(f"blob {image.config.digest} from {proxy.host}/{repo}: "
                                     f"expected {image.config.digest}, got sha256:")
    assert not blobs.has(image.config.digest)


def test_head_digest(client: RegistryClient, repo: str, proxied: tuple[FaultProxy, Image]
                     ) -> None:
    proxy, image = proxied
    assert head_digest(client, parse_reference(f"{proxy.host}/{repo}:p")) == parse_digest(
        image.digest)
    assert [r.method for r in proxy.requests()] == ["HEAD"]


# -- lock JSON ---------------------------------------------------------------------------------

def test_json_round_trip(client: RegistryClient, registry: Registry, repo: str, multi: Index,
                         blobs: BlobCache) -> None:
    got = resolve_image(client, parse_reference(f"{registry.host}/{repo}:multi"),
                        parse_platform("linux/arm/v7"), blobs)
    data = got.to_json()
    assert list(data) == sorted(data)
    assert all(list(layer) == sorted(layer) for layer in data["layers"])
    text = json.dumps(data, sort_keys=True)
    assert ResolvedImage.from_json(json.loads(text)) == got
    arm = multi.image_for("linux", "arm", "v7")
    assert data["platform"] == "linux/arm/v7"
    assert data["manifest_digest"] == arm.digest and data["index_digest"] == multi.digest
    assert data["layers"][0] == {"diff_id": arm.layers[0].diff_id,
                                 "digest": arm.layers[0].digest,
                                 "media_type": mt.OCI_LAYER_GZIP, "size": arm.layers[0].size}


GOOD_ENTRY = {
    "config": {"digest": "sha256:" + "1" * 64, "media_type": mt.OCI_CONFIG, "size": 10},
    "index_digest": None,
    "layers": [{"diff_id": "sha256:" + "2" * 64, "digest": "sha256:" + "3" * 64,
                "media_type": mt.OCI_LAYER_GZIP, "size": 20}],
    "manifest_digest": "sha256:" + "4" * 64,
    "platform": "linux/amd64",
    "ref": "docker.io/library/alpine:3.19",
    "registry": "docker.io",
    "repository": "library/alpine",
}


def test_from_json_good_entry() -> None:
    got = ResolvedImage.from_json(GOOD_ENTRY)
    assert got.to_json() == GOOD_ENTRY
    assert got.index_digest is None and got.layers[0].size == 20


def broken(path: str, value: object) -> dict[str, object]:
    entry = json.loads(json.dumps(GOOD_ENTRY))
    target = entry
    keys = path.split(".")
    for key in keys[:-1]:
        target = target[int(key)] if isinstance(target, list) else target[key]
    if value is KeyError:
        del target[keys[-1]]
    else:
        target[keys[-1]] = value
    return entry  # type: ignore[no-any-return]


@pytest.mark.parametrize("entry, reason", [
    (broken("manifest_digest", "sha256:short"), "invalid digest 'sha256:short': expected 64"
     " lowercase hex characters after 'sha256:'"),
    (broken("layers.0.size", -1), "layer 0 size must be a non-negative integer"),
    (broken("layers.0.size", "20"), "layer 0 size must be a non-negative integer"),
    (broken("layers.0.media_type", "application/x-tar"),
     "layer 0 has unsupported media type 'application/x-tar'"),
    (broken("layers.0.diff_id", KeyError), "'diff_id' must be a non-empty string"),
    (broken("layers", {}), "'layers' must be a list"),
    (broken("config", None), "'config' must be an object"),
    (broken("platform", "linux"), "invalid platform 'linux': give both os and"
     " architecture, e.g. 'linux/amd64'"),
    (broken("ref", "docker.io/Upper/case"), "invalid image reference 'docker.io/Upper/case':"
     " repository name 'Upper/case' must be lowercase"),
    (broken("registry", 5), "'registry' must be a non-empty string"),
], ids=["bad-digest", "negative-size", "string-size", "layer-type", "no-diff-id",
        "layers-not-list", "config-null", "bad-platform", "bad-ref", "registry-not-string"])
def test_from_json_refuses(entry: dict[str, object], reason: str) -> None:
    with pytest.raises(LockError) as info:
        ResolvedImage.from_json(entry)
    message = str(info.value)
    assert message.startswith(f"lock entry {entry['ref']!r}: ")
    assert reason in message
    assert message.endswith("; run the resolve step again to rewrite it")
