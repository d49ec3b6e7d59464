"""Local sources built in memory: every kind resolves, and hostile ones fail with the exact error.

Archives are written here from a tiny vocabulary (members, manifest.json,
index.json) so each hostile case is one table row. A canary file outside
the source must never be read into the cache.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import pytest

from pipeline.base.digest import parse_digest
from pipeline.errors import BadReference, DigestMismatch, LocalSourceError, PipelineError
from pipeline.local.source import open_blob, probe_local, resolve_local
from pipeline.oci.localref import LocalRef, parse_local_reference
from pipeline.oci.platform import parse_platform
from tests.harness.images import Image, file, make_image, make_layer

AMD64 = parse_platform("linux/amd64")
CANARY = b"canary: never inside an image\n"


def image(compression: str = "none") -> Image:
    return make_image([make_layer([file("etc/hostname", b"local\n")], compression=compression)],
                      oci=True)


def hexof(digest: str) -> str:
    return digest.split(":", 1)[1]


def tar_bytes(members: dict[str, bytes], *, links: dict[str, str] | None = None,
              again: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (*members.items(), *again):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return out.getvalue()


def layout_members(img: Image, *, tag: str = "v1") -> dict[str, bytes]:
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [img.descriptor(annotations={"org.opencontainers.image.ref.name": tag},
                                          platform=False)]}
    members = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
               "index.json": json.dumps(index).encode()}
    for blob in (img.config, *img.layers):
        members[f"blobs/sha256/{hexof(blob.digest)}"] = blob.data
    members[f"blobs/sha256/{hexof(img.digest)}"] = img.manifest
    return members


def classic_members(img: Image, *, layer_name: str = "abc/layer.tar",
                    config_name: str = "config.json", layer_data: bytes | None = None,
                    tags: list[str] | None = None) -> dict[str, bytes]:
    manifest = [{"Config": config_name, "RepoTags": tags or ["example.com/app:v1"],
                 "Layers": [layer_name]}]
    members = {"manifest.json": json.dumps(manifest).encode(), config_name: img.config.data}
    if not layer_name.startswith(("/", "..")):
        members[layer_name] = img.layers[0].data if layer_data is None else layer_data
    return members


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    path = tmp_path / "canary"
    path.write_bytes(CANARY)
    return path


def write(tmp_path: Path, name: str, data: bytes) -> str:
    (tmp_path / "src").mkdir(exist_ok=True)
    (tmp_path / "src" / name).write_bytes(data)
    return name


# Every kind resolves to the same pinned values --------------------------------


def test_an_oci_archive_and_its_layout_directory_resolve_alike(tmp_path: Path) -> None:
    img = image("gzip")
    members = layout_members(img)
    for name, data in members.items():
        (tmp_path / "dir" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "dir" / name).write_bytes(data)
    (tmp_path / "img.tar").write_bytes(tar_bytes(members))
    from_dir = resolve_local(parse_local_reference("oci:dir:v1"), tmp_path, AMD64)
    from_tar = resolve_local(parse_local_reference("oci-archive:img.tar:v1"), tmp_path, AMD64)
    assert from_dir.layers == from_tar.layers
    assert str(from_dir.manifest_digest) == img.digest == str(from_dir.identity)
    assert [str(layer.digest) for layer in from_dir.layers] == [img.layers[0].digest]
    by_digest = parse_local_reference(f"oci:dir@{img.digest}")
    assert resolve_local(by_digest, tmp_path, AMD64).layers == from_dir.layers
    ref = parse_local_reference("oci-archive:img.tar:v1")
    assert probe_local(ref, tmp_path) == from_tar.identity
    layer = from_tar.layers[0]
    with open_blob(ref, tmp_path, layer.digest, layer.size) as reader:
        assert reader.read() == img.layers[0].data


@pytest.mark.parametrize(("compression", "media_type"), [
    ("none", "application/vnd.docker.image.rootfs.diff.tar"),
    ("gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    ("zstd", "application/vnd.docker.image.rootfs.diff.tar.zstd")])
def test_a_classic_docker_archive_makes_its_manifest_from_the_layer_files(
        tmp_path: Path, compression: str, media_type: str) -> None:
    img = image(compression)
    (tmp_path / "d.tar").write_bytes(tar_bytes(classic_members(img)))
    ref = parse_local_reference("docker-archive:d.tar:example.com/app:v1")
    resolved = resolve_local(ref, tmp_path, AMD64)
    layer = resolved.layers[0]
    assert (str(layer.digest), str(layer.diff_id)) == (img.layers[0].digest,
                                                       img.layers[0].diff_id)
    assert layer.media_type == media_type
    assert probe_local(ref, tmp_path) == resolved.identity
    with open_blob(ref, tmp_path, layer.digest, layer.size) as reader:
        assert reader.read() == img.layers[0].data


# Hostile sources -----------------------------------------------------------------

HOSTILE = {
    "layer-path-escapes-the-archive": (
        lambda img: tar_bytes(classic_members(img, layer_name="../../canary")),
        LocalSourceError, "the name '../../canary' leaves the archive"),
    "manifest-names-an-absolute-file": (
        lambda img: tar_bytes(classic_members(img, layer_name="/etc/passwd")),
        LocalSourceError, "the name '/etc/passwd' is not a relative path inside the archive"),
    "manifest-names-a-file-not-in-the-archive": (
        lambda img: tar_bytes({k: v for k, v in classic_members(img).items()
                               if k != "abc/layer.tar"}),
        LocalSourceError, "has no file 'abc/layer.tar'"),
    "layer-is-a-symlink-out": (
        lambda img: tar_bytes({k: v for k, v in classic_members(img).items()
                               if k != "abc/layer.tar"}, links={"abc/layer.tar": "/canary"}),
        LocalSourceError, "'abc/layer.tar' in archive"),
    "wrong-diff-id": (
        lambda img: tar_bytes(classic_members(
            img, layer_data=make_layer([file("etc/hostname", b"evil\n")],
                                       compression="none").data)),
        DigestMismatch, "layer 'abc/layer.tar' (a plain tar) against its config diff_id"),
    "member-named-twice": (
        lambda img: tar_bytes(classic_members(img), again=(("./manifest.json", b"[]"),)),
        LocalSourceError, "holds 'manifest.json' twice"),
    "member-escapes-by-name": (
        lambda img: tar_bytes({**classic_members(img), "../evil": b"x"}),
        LocalSourceError, "the name '../evil' leaves the archive"),
    "gzipped-archive": (
        lambda img: b"\x1f\x8b" + b"\0" * 100,
        LocalSourceError, "is gzip-compressed; image archives are read in place"),
    "not-a-tar": (
        lambda img: b"this is not a tar archive" * 40,
        LocalSourceError, "is not a readable tar"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_hostile_docker_archive_fails_with_the_exact_error(tmp_path: Path, canary: Path,
                                                             case: str) -> None:
    build, error, message = HOSTILE[case]
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.tar").write_bytes(build(image("none")))
    ref = parse_local_reference("docker-archive:d.tar")
    with pytest.raises(error) as caught:
        resolve_local(ref, tmp_path / "sub", AMD64)
    assert message in str(caught.value)
    assert isinstance(caught.value, PipelineError)
    assert canary.read_bytes() == CANARY


def test_a_layout_whose_blobs_link_outside_it_reads_nothing_there(tmp_path: Path) -> None:
    img = image("none")
    outside = tmp_path / "outside"
    for name, data in layout_members(img).items():
        root = outside if name.startswith("blobs/") else tmp_path / "dir"
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    os.symlink(outside / "blobs", tmp_path / "dir" / "blobs")
    with pytest.raises(LocalSourceError) as caught:
        resolve_local(parse_local_reference("oci:dir:v1"), tmp_path, AMD64)
    assert f"resolves to '{outside / 'blobs/sha256'}" in str(caught.value)
    assert "outside the layout; refusing it" in str(caught.value)


def test_a_layout_without_the_tag_lists_the_tags_it_has(tmp_path: Path) -> None:
    (tmp_path / "img.tar").write_bytes(tar_bytes(layout_members(image(), tag="stable")))
    with pytest.raises(LocalSourceError) as caught:
        resolve_local(parse_local_reference("oci-archive:img.tar:v1"), tmp_path, AMD64)
    assert str(caught.value) == ("oci-archive:img.tar:v1 has no image tagged 'v1' "
                                 "(tags: 'stable')")


def test_a_tampered_layout_blob_is_a_digest_mismatch(tmp_path: Path) -> None:
    img = image()
    members = layout_members(img)
    members[f"blobs/sha256/{hexof(img.config.digest)}"] = img.config.data.replace(
        b"amd64", b"arm64")
    (tmp_path / "img.tar").write_bytes(tar_bytes(members))
    with pytest.raises(DigestMismatch):
        resolve_local(parse_local_reference("oci-archive:img.tar:v1"), tmp_path, AMD64)


# References (no I/O) ---------------------------------------------------------------

GOOD = {
    "oci:dir": LocalRef("oci", "dir"),
    "oci:./a/b:v1.2": LocalRef("oci", "./a/b", "v1.2"),
    "oci-archive:/abs/x.tar:latest": LocalRef("oci-archive", "/abs/x.tar", "latest"),
    "docker-archive:x.tar:alpine": LocalRef("docker-archive", "x.tar",
                                            "docker.io/library/alpine:latest"),
    "docker-archive:x.tar:localhost:5000/app:v2": LocalRef(
        "docker-archive", "x.tar", "localhost:5000/app:v2"),
    "oci:dir@sha256:" + "a" * 64: LocalRef("oci", "dir", None,
                                           parse_digest("sha256:" + "a" * 64)),
}


@pytest.mark.parametrize("text", sorted(GOOD))
def test_local_references_parse(text: str) -> None:
    assert parse_local_reference(text) == GOOD[text]


BAD = {
    "empty-path": ("oci:", "missing path after 'oci:'"),
    "empty-tag": ("oci:dir:", "empty tag after the path's ':'"),
    "bad-tag": ("oci:dir:-x", "tag '-x' is not an OCI ref name"),
    "control-char": ("oci-archive:a\x1bb.tar", "the path holds a control character"),
    "docker-digest": ("docker-archive:x.tar:alpine@sha256:" + "a" * 64,
                      "a docker-archive is selected by NAME:TAG"),
    "bad-digest": ("oci:dir@sha256:xyz", "bad digest after '@'"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_local_references_say_why(case: str) -> None:
    text, reason = BAD[case]
    with pytest.raises(BadReference) as caught:
        parse_local_reference(text)
    assert reason in str(caught.value)
    assert "\x1b" not in str(caught.value)


def test_a_docker_25_archive_is_read_through_the_oci_layout_inside_it(tmp_path: Path) -> None:
    # Docker 25+ (containerd image store) writes an OCI layout plus a manifest.json whose
    # names are blobs/sha256/<hex>; the image is named by io.containerd.image.name.
    img = image("gzip")
    members = layout_members(img)
    index = json.loads(members["index.json"])
    index["manifests"][0]["annotations"] = {
        "io.containerd.image.name": "docker.io/library/app:1.0",
        "org.opencontainers.image.ref.name": "1.0"}
    members["index.json"] = json.dumps(index).encode()
    members["manifest.json"] = json.dumps([{
        "Config": f"blobs/sha256/{hexof(img.config.digest)}", "RepoTags": ["app:1.0"],
        "Layers": [f"blobs/sha256/{hexof(img.layers[0].digest)}"]}]).encode()
    (tmp_path / "d.tar").write_bytes(tar_bytes(members))
    ref = parse_local_reference("docker-archive:d.tar:app:1.0")
    resolved = resolve_local(ref, tmp_path, AMD64)
    assert (str(resolved.manifest_digest), str(resolved.identity)) == (img.digest, img.digest)
    assert [str(layer.digest) for layer in resolved.layers] == [img.layers[0].digest]
    assert resolved.layers[0].media_type == img.layers[0].media_type
    with pytest.raises(LocalSourceError) as caught:
        resolve_local(parse_local_reference("docker-archive:d.tar:app:2.0"), tmp_path, AMD64)
    assert str(caught.value) == ("docker-archive:d.tar:docker.io/library/app:2.0 has no image "
                                 "tagged 'docker.io/library/app:2.0' (tags: "
                                 "'docker.io/library/app:1.0')")


def test_a_local_lock_entry_round_trips_and_a_forged_source_is_refused(
        tmp_path: Path) -> None:
    from pipeline.errors import LockError
    from pipeline.oci.resolved import ResolvedImage

    (tmp_path / "img.tar").write_bytes(tar_bytes(layout_members(image())))
    resolved = resolve_local(parse_local_reference("oci-archive:img.tar:v1"), tmp_path, AMD64)
    data = json.loads(json.dumps(resolved.to_json()))
    assert data["source"] == {"kind": "oci-archive", "path": "img.tar",
                              "identity": str(resolved.identity)}
    assert "registry" not in data and ResolvedImage.from_json(data) == resolved
    data["source"]["path"] = "/etc/other.tar"
    with pytest.raises(LockError) as caught:
        ResolvedImage.from_json(data)
    assert "'source' kind and path disagree with 'ref'" in str(caught.value)


def test_an_oci_archive_made_with_tar_from_a_layout_directory_reads(tmp_path: Path) -> None:
    # `tar -C layout -cf image.tar .` names every member ./x and starts with ./ itself.
    img = image()
    layout = tmp_path / "layout"
    for name, data in layout_members(img).items():
        (layout / name).parent.mkdir(parents=True, exist_ok=True)
        (layout / name).write_bytes(data)
    with tarfile.open(tmp_path / "image.tar", "w") as tar:
        tar.add(layout, arcname=".")
    resolved = resolve_local(parse_local_reference("oci-archive:image.tar:v1"), tmp_path, AMD64)
    assert str(resolved.manifest_digest) == img.digest


def test_an_index_in_a_layout_is_resolved_to_the_platform_as_for_a_registry(
        tmp_path: Path) -> None:
    from pipeline.errors import PlatformNotFound
    from tests.harness.images import make_index

    amd = make_image([make_layer([file("arch", b"amd64\n")])], architecture="amd64")
    arm = make_image([make_layer([file("arch", b"arm64\n")])], architecture="arm64")
    index = make_index([amd, arm], attestation=True)
    members = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}',
               "index.json": json.dumps({"schemaVersion": 2, "manifests": [{
                   "mediaType": index.media_type, "digest": index.digest,
                   "size": len(index.manifest),
                   "annotations": {"org.opencontainers.image.ref.name": "v1"}}]}).encode(),
               f"blobs/sha256/{hexof(index.digest)}": index.manifest}
    for img in (amd, arm, *index.attestations):
        members[f"blobs/sha256/{hexof(img.digest)}"] = img.manifest
        for blob in (img.config, *img.layers):
            members[f"blobs/sha256/{hexof(blob.digest)}"] = blob.data
    (tmp_path / "multi.tar").write_bytes(tar_bytes(members))
    ref = parse_local_reference("oci-archive:multi.tar:v1")
    got = resolve_local(ref, tmp_path, parse_platform("linux/arm64"))
    assert (str(got.index_digest), str(got.manifest_digest)) == (index.digest, arm.digest)
    assert str(got.identity) == index.digest and str(got.platform) == "linux/arm64"
    with pytest.raises(PlatformNotFound) as caught:
        resolve_local(ref, tmp_path, parse_platform("linux/riscv64"))
    assert "linux/amd64, linux/arm64" in str(caught.value)
