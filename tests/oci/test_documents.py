"""Strict parsing of manifests, indexes and image configs; platform selection."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pipeline.base.digest import parse_digest
from pipeline.errors import BadImage, PlatformNotFound
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import (
    CONFIG_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    Descriptor,
    ImageIndex,
    ImageManifest,
    is_attestation,
    offered_platforms,
    parse_image_config,
    parse_manifest_document,
    select_manifest,
)
from pipeline.oci.platform import Platform, parse_platform

W = "reg.test/app:1"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def desc(media_type: str, digest: str = D1, size: int = 10, **extra: Any) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": size, **extra}


def manifest(*, media_type: str | None = mt.OCI_MANIFEST, config_type: str = mt.OCI_CONFIG,
             layers: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2, "config": desc(config_type, D1, 100),
                           "layers": layers if layers is not None else [
                               desc(mt.OCI_LAYER_GZIP, D2, 1000)], **extra}
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def entry(platform: str | None, digest: str = D2, media_type: str = mt.OCI_MANIFEST,
          **extra: Any) -> dict[str, Any]:
    item = desc(media_type, digest, 500, **extra)
    if platform is not None:
        os_, arch, *variant = platform.split("/")
        item["platform"] = {"os": os_, "architecture": arch,
                            **({"variant": variant[0]} if variant else {})}
    return item


def index(entries: list[dict[str, Any]], media_type: str | None = mt.OCI_INDEX,
          **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schemaVersion": 2, "manifests": entries, **extra}
    if media_type is not None:
        doc["mediaType"] = media_type
    return doc


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def test_oci_manifest() -> None:
    parsed = parse_manifest_document(raw(manifest()), mt.OCI_MANIFEST, where=W)
    assert parsed == ImageManifest(mt.OCI_MANIFEST,
                                   Descriptor(mt.OCI_CONFIG, parse_digest(D1), 100),
                                   (Descriptor(mt.OCI_LAYER_GZIP, parse_digest(D2), 1000),))


def test_docker_manifest_with_charset_parameter() -> None:
    doc = manifest(media_type=mt.DOCKER_MANIFEST, config_type=mt.DOCKER_CONFIG,
                   layers=[desc(mt.DOCKER_LAYER_GZIP, D2, 5)])
    parsed = parse_manifest_document(raw(doc), mt.DOCKER_MANIFEST + "; charset=utf-8", where=W)
    assert isinstance(parsed, ImageManifest) and parsed.media_type == mt.DOCKER_MANIFEST


def test_oci_manifest_without_media_type_field_uses_content_type() -> None:
    parsed = parse_manifest_document(raw(manifest(media_type=None)), mt.OCI_MANIFEST, where=W)
    assert isinstance(parsed, ImageManifest)


def test_generic_content_type_uses_media_type_field() -> None:
    parsed = parse_manifest_document(raw(index([entry("linux/amd64")])), "application/json",
                                     where=W)
    assert isinstance(parsed, ImageIndex)
    assert parsed.manifests[0].platform == Platform("linux", "amd64")


def test_index_descriptor_fields() -> None:
    doc = index([entry("linux/arm/v7", annotations={"k": "v"}, urls=["https://x"])])
    parsed = parse_manifest_document(raw(doc), mt.OCI_INDEX, where=W)
    assert isinstance(parsed, ImageIndex)
    (item,) = parsed.manifests
    assert item.platform == Platform("linux", "arm", "v7")
    assert item.annotation("k") == "v" and item.urls == ("https://x",)


SCHEMA1 = ("is a Docker schema 1 manifest, which is deprecated and not supported; ask the"
           " publisher for an OCI or Docker schema 2 image, or convert it with"
           " `skopeo copy --format v2s2`")

# (id, body, content type, exact message after "reg.test/app:1: ")
REFUSED = [
    ("schema1-content-type", raw({"schemaVersion": 1, "name": "x"}),
     mt.DOCKER_SCHEMA1_SIGNED, SCHEMA1),
    ("schema1-version-field", raw({"schemaVersion": 1, "fsLayers": []}), "application/json",
     SCHEMA1),
    ("schema1-media-type-field", raw({"schemaVersion": 2, "mediaType": mt.DOCKER_SCHEMA1}),
     "", SCHEMA1),
    ("content-type-says-index-field-says-manifest", raw(manifest()), mt.OCI_INDEX,
     f"Content-Type is '{mt.OCI_INDEX}' but the mediaType field says '{mt.OCI_MANIFEST}';"
     " refusing an ambiguous manifest"),
    ("content-type-docker-field-oci", raw(manifest()), mt.DOCKER_MANIFEST,
     f"Content-Type is '{mt.DOCKER_MANIFEST}' but the mediaType field says '{mt.OCI_MANIFEST}';"
     " refusing an ambiguous manifest"),
    ("both-manifests-and-layers", raw({**manifest(media_type=None), "manifests": []}),
     mt.OCI_MANIFEST, "has both 'manifests' and 'config'/'layers'; refusing a document that"
     " reads as both an index and a manifest"),
    ("index-with-config", raw({**index([]), "config": desc(mt.OCI_CONFIG)}), mt.OCI_INDEX,
     "has both 'manifests' and 'config'/'layers'; refusing a document that reads as both an"
     " index and a manifest"),
    ("no-type-at-all", raw(manifest(media_type=None)), "application/json",
     "neither Content-Type (application/json) nor a mediaType field says whether this is a"
     " manifest or an index"),
    ("not-a-manifest-content-type", raw(manifest()), "text/html",
     "the registry sent Content-Type 'text/html', which is not a manifest or index type; is"
     " this an image?"),
    ("config-type-as-media-type", raw({"schemaVersion": 2, "mediaType": mt.OCI_CONFIG}), "",
     f"mediaType '{mt.OCI_CONFIG}' is not an image manifest or index"),
    ("artifact-type", raw(manifest(artifactType="application/vnd.example.sbom")),
     mt.OCI_MANIFEST, "is an OCI artifact (artifactType 'application/vnd.example.sbom'), not a"
     " container image; point the reference at an image"),
    ("helm-chart-config", raw(manifest(config_type="application/vnd.cncf.helm.config.v1+json")),
     mt.OCI_MANIFEST, "is an OCI artifact (config media type"
     " 'application/vnd.cncf.helm.config.v1+json'), not a container image; point the reference"
     " at an image"),
    ("empty-config-artifact", raw(manifest(config_type=mt.OCI_EMPTY)), mt.OCI_MANIFEST,
     f"is an OCI artifact (config media type '{mt.OCI_EMPTY}'), not a container image; point"
     " the reference at an image"),
    ("schema-version-3", raw({**manifest(), "schemaVersion": 3}), mt.OCI_MANIFEST,
     "schemaVersion is 3, expected 2"),
    ("schema-version-bool", raw({**manifest(), "schemaVersion": True}), mt.OCI_MANIFEST,
     "schemaVersion is True, expected 2"),
    ("not-json", b"{nope", mt.OCI_MANIFEST,
     "manifest is not valid UTF-8 JSON (Expecting property name enclosed in double quotes:"
     " line 1 column 2 (char 1))"),
    ("not-utf8", b'{"a": "\xff"}', mt.OCI_MANIFEST, "manifest is not valid UTF-8 JSON ("
     "'utf-8' codec can't decode byte 0xff in position 7: invalid start byte)"),
    ("array", b"[]", mt.OCI_MANIFEST, "manifest must be a JSON object, got list"),
    ("duplicate-key", b'{"schemaVersion": 2, "schemaVersion": 2}', mt.OCI_MANIFEST,
     "manifest has the key 'schemaVersion' twice; refusing an ambiguous document"),
    ("layers-not-list", raw({**manifest(), "layers": {}}), mt.OCI_MANIFEST,
     "an image manifest needs 'config' and a 'layers' list"),
    ("index-without-manifests", raw({"schemaVersion": 2, "mediaType": mt.OCI_INDEX}),
     mt.OCI_INDEX, "an index needs a 'manifests' list"),
    ("bad-digest", raw(manifest(layers=[desc(mt.OCI_LAYER, "sha256:abc")])), mt.OCI_MANIFEST,
     "invalid digest 'sha256:abc': expected 64 lowercase hex characters after 'sha256:'"),
    ("digest-path-traversal", raw(manifest(layers=[desc(mt.OCI_LAYER, "sha256:../../etc")])),
     mt.OCI_MANIFEST, "invalid digest 'sha256:../../etc': expected 64 lowercase hex characters"
     " after 'sha256:'"),
    ("negative-size", raw(manifest(layers=[desc(mt.OCI_LAYER, D2, -1)])), mt.OCI_MANIFEST,
     f"descriptor {D2} has size -1; expected a non-negative integer"),
    ("string-size", raw(manifest(layers=[desc(mt.OCI_LAYER, D2, "1")])), mt.OCI_MANIFEST,
     f"descriptor {D2} has size '1'; expected a non-negative integer"),
    ("bool-size", raw(manifest(layers=[desc(mt.OCI_LAYER, D2, True)])), mt.OCI_MANIFEST,
     f"descriptor {D2} has size True; expected a non-negative integer"),
    ("bad-media-type", raw(manifest(layers=[desc("not a type", D2)])), mt.OCI_MANIFEST,
     "invalid mediaType 'not a type'"),
    ("missing-media-type", raw(manifest(layers=[{"digest": D2, "size": 1}])), mt.OCI_MANIFEST,
     "'mediaType' must be a non-empty string, got None"),
    ("platform-not-object", raw(index([{**entry(None), "platform": "linux/amd64"}])),
     mt.OCI_INDEX, f"descriptor {D2} platform must be an object"),
    ("platform-without-os", raw(index([{**entry(None), "platform": {"architecture": "amd64"}}])),
     mt.OCI_INDEX, "'os' must be a non-empty string, got None"),
    ("annotations-not-strings", raw(index([entry("linux/amd64", annotations={"a": 1})])),
     mt.OCI_INDEX, f"descriptor {D2} annotations must map strings to strings"),
    ("urls-not-list", raw(index([entry("linux/amd64", urls="https://x")])), mt.OCI_INDEX,
     f"descriptor {D2} urls must be a list of strings"),
]


@pytest.mark.parametrize("body, content_type, message", [r[1:] for r in REFUSED],
                         ids=[r[0] for r in REFUSED])
def test_refused(body: bytes, content_type: str, message: str) -> None:
    with pytest.raises(BadImage) as info:
        parse_manifest_document(body, content_type, where=W)
    assert str(info.value) == f"{W}: {message}"


def test_manifest_size_cap() -> None:
    body = raw(manifest(padding="x" * MANIFEST_MAX_BYTES))
    with pytest.raises(BadImage) as info:
        parse_manifest_document(body, mt.OCI_MANIFEST, where=W)
    assert str(info.value) == (f"{W}: manifest is {len(body)} bytes, more than the"
                               f" {MANIFEST_MAX_BYTES} byte limit")


def parsed_index(entries: list[dict[str, Any]]) -> ImageIndex:
    result = parse_manifest_document(raw(index(entries)), mt.OCI_INDEX, where=W)
    assert isinstance(result, ImageIndex)
    return result


ATTESTATION = {"vnd.docker.reference.type": "attestation-manifest",
               "vnd.docker.reference.digest": D2}


def test_select_skips_attestations() -> None:
    idx = parsed_index([
        entry("unknown/unknown", D1, annotations=ATTESTATION),
        entry("linux/amd64", D2),
        entry("linux/arm64", D3),
    ])
    assert select_manifest(idx, parse_platform("linux/amd64"), where=W).digest == parse_digest(D2)
    assert is_attestation(idx.manifests[0])
    assert offered_platforms(idx) == ["linux/amd64", "linux/arm64"]


def test_attestation_by_annotation_alone_is_never_chosen() -> None:
    idx = parsed_index([entry("linux/amd64", D1, annotations=ATTESTATION)])
    with pytest.raises(PlatformNotFound) as info:
        select_manifest(idx, parse_platform("linux/amd64"), where=W)
    assert info.value.offered == []


def test_unknown_unknown_is_never_chosen_even_when_asked() -> None:
    idx = parsed_index([entry("unknown/unknown", D1)])
    with pytest.raises(PlatformNotFound) as err:
        select_manifest(idx, Platform("unknown", "unknown"), where=W)
    assert str(err.value) == ("reg.test/app:1 has no image for platform unknown/unknown; it "
                              "offers: none (set `platform` for this image in images.toml)")


def test_platform_not_found_lists_offer() -> None:
    idx = parsed_index([
        entry("linux/arm64", D1), entry("linux/arm/v6", D2), entry(None, D3),
        entry("unknown/unknown", D3, annotations=ATTESTATION),
        entry("linux/s390x", D3, media_type=mt.OCI_INDEX),  # nested index: not an image entry
        entry("linux/ppc64le", D3, artifactType="application/vnd.example"),
    ])
    with pytest.raises(PlatformNotFound) as info:
        select_manifest(idx, parse_platform("linux/amd64"), where=W)
    assert str(info.value) == (f"{W} has no image for platform linux/amd64; it offers:"
                               " linux/arm/v6, linux/arm64, unspecified (set `platform` for"
                               " this image in images.toml)")


def test_select_variant_fallback_and_docker_list() -> None:
    doc = index([entry("linux/arm/v6", D1, mt.DOCKER_MANIFEST),
                 entry("linux/arm64/v8", D2, mt.DOCKER_MANIFEST)],
                media_type=mt.DOCKER_MANIFEST_LIST)
    idx = parse_manifest_document(raw(doc), mt.DOCKER_MANIFEST_LIST, where=W)
    assert isinstance(idx, ImageIndex)
    assert select_manifest(idx, parse_platform("linux/arm/v7"), where=W).digest == parse_digest(D1)
    chosen = select_manifest(idx, parse_platform("linux/arm64"), where=W)
    assert chosen.digest == parse_digest(D2) and chosen.platform == Platform("linux", "arm64")


def config(**overrides: Any) -> bytes:
    doc: dict[str, Any] = {"architecture": "arm", "os": "linux", "variant": "v7",
                           "rootfs": {"type": "layers", "diff_ids": [D1, D2]},
                           "config": {"Env": ["PATH=/bin"]}}
    doc.update(overrides)
    return raw(doc)


def test_image_config() -> None:
    parsed = parse_image_config(config(), where=W)
    assert parsed.platform == Platform("linux", "arm", "v7")
    assert parsed.diff_ids == (parse_digest(D1), parse_digest(D2))


@pytest.mark.parametrize("body, message", [
    (config(os=None), "'os' must be a non-empty string, got None"),
    (config(architecture=""), "'architecture' must be a non-empty string, got ''"),
    (config(rootfs={"type": "tar", "diff_ids": []}), "image config needs rootfs.type 'layers'"),
    (config(rootfs={"type": "layers"}), "image config needs a rootfs.diff_ids list"),
    (config(rootfs={"type": "layers", "diff_ids": ["sha256:zz"]}),
     "rootfs.diff_ids: invalid digest 'sha256:zz': expected 64 lowercase hex characters after"
     " 'sha256:'"),
    (b"null", "image config must be a JSON object, got NoneType"),
], ids=["no-os", "empty-arch", "rootfs-type", "no-diff-ids", "bad-diff-id", "null"])
def test_image_config_refused(body: bytes, message: str) -> None:
    with pytest.raises(BadImage) as info:
        parse_image_config(body, where=W)
    assert str(info.value) == f"{W}: {message}"


def test_image_config_cap() -> None:
    body = config(padding="x" * CONFIG_MAX_BYTES)
    with pytest.raises(BadImage, match="more than the 8388608 byte limit"):
        parse_image_config(body, where=W)

