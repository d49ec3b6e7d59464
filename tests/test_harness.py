"""The harness itself, proven against the real registry with plain httpx (no pipeline code)."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
import zlib
from pathlib import Path

import httpx
import pytest
import zstandard

from tests.harness.debian import PING_CAPABILITY, debian_like
from tests.harness.dockerconfig import DockerConfig
from tests.harness.images import (MT, Layer, bomb, chardev, dir, fifo, file, hardlink,
                                  make_image, make_index, make_layer, opaque, raw, symlink,
                                  tar_bytes, whiteout)
from tests.harness.push import push
from tests.harness.registry import Registry

ACCEPT_ALL = ", ".join([MT.OCI_INDEX, MT.OCI_MANIFEST, MT.DOCKER_LIST, MT.DOCKER_MANIFEST])


def _decompress(layer: Layer) -> bytes:
    if layer.compression == "gzip":
        return gzip.decompress(layer.data)
    if layer.compression == "zstd":
        return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(layer.data)).read()
    return layer.data


SAMPLE = [dir("etc"), file("etc/hostname", b"harness\n"), symlink("etc/link", "hostname"),
          hardlink("etc/hard", "etc/hostname"), chardev("dev/null", 1, 3), fifo("run/fifo"),
          whiteout("etc/gone"), opaque("var")]


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layer_round_trips_through_tarfile(compression: str) -> None:
    layer = make_layer(SAMPLE, compression=compression)
    raw = _decompress(layer)
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == layer.diff_id
    assert layer.digest == "sha256:" + hashlib.sha256(layer.data).hexdigest()
    names = [m.name for m in tarfile.open(fileobj=io.BytesIO(raw))]
    assert names == ["etc", "etc/hostname", "etc/link", "etc/hard", "dev/null", "run/fifo",
                     "etc/.wh.gone", "var/.wh..wh..opq"]


def test_layers_are_deterministic() -> None:
    assert make_layer(SAMPLE).digest == make_layer(SAMPLE).digest
    assert make_image([make_layer(SAMPLE)]).digest == make_image([make_layer(SAMPLE)]).digest


@pytest.mark.parametrize("oci", [True, False], ids=["oci", "docker"])
def test_push_image_and_pull_back_by_digest(registry: Registry, repo: str, oci: bool) -> None:
    layers = [make_layer(SAMPLE), make_layer([file("z", b"zstd")], compression="zstd"),
              make_layer([file("p", b"plain")], compression="none")]
    image = make_image(layers, oci=oci)
    digest = push(registry, repo, "v1", image)
    assert digest == image.digest
    with httpx.Client(base_url=registry.url) as c:
        r = c.get(f"/v2/{repo}/manifests/v1", headers={"Accept": ACCEPT_ALL})
        assert r.status_code == 200
        assert r.headers["content-type"] == (MT.OCI_MANIFEST if oci else MT.DOCKER_MANIFEST)
        assert r.content == image.manifest
        assert r.headers["docker-content-digest"] == image.digest
        for blob in image.blobs:
            got = c.get(f"/v2/{repo}/blobs/{blob.digest}")
            assert got.status_code == 200 and got.content == blob.data


def test_docker_config_and_credential_helper(docker_config: DockerConfig) -> None:
    import json
    import os
    import subprocess

    docker_config.add_auth("127.0.0.1:5000", "alice", "wonderland")
    docker_config.set_cred_helper("ghcr.io", "fake")
    helper = docker_config.helper("fake", {"ghcr.io": ("bob", "builder")})
    assert os.environ["DOCKER_CONFIG"] == str(docker_config.dir)
    data = json.loads(docker_config.path.read_text())
    assert data["auths"]["127.0.0.1:5000"]["auth"] == "YWxpY2U6d29uZGVybGFuZA=="
    assert data["credHelpers"] == {"ghcr.io": "fake"}
    ok = subprocess.run(["docker-credential-fake", "get"], input="ghcr.io", text=True,
                        capture_output=True)
    assert ok.returncode == 0
    assert json.loads(ok.stdout) == {"ServerURL": "ghcr.io", "Username": "bob",
                                     "Secret": "builder"}
    missing = subprocess.run(["docker-credential-fake", "get"], input="quay.io", text=True,
                             capture_output=True)
    assert missing.returncode == 1
    assert missing.stdout.strip() == "credentials not found in native keychain"
    assert [c.input for c in helper.calls()] == ["ghcr.io", "quay.io"]


# -- broken and hostile layers --------------------------------------------------------------


def test_broken_layer_hooks_break_what_they_say() -> None:
    members = [file("a", b"x" * 5000)]
    good = make_layer(members)
    truncated = make_layer(members, truncate=-8)
    assert truncated.data == good.data[:-8] and truncated.diff_id == good.diff_id
    with pytest.raises(EOFError):
        gzip.decompress(truncated.data)
    trailing = make_layer(members, trailing=b"GARBAGE!")
    d = zlib.decompressobj(31)
    assert d.decompress(trailing.data) == tar_bytes(members) and d.unused_data == b"GARBAGE!"
    liar = make_layer(members, compression="zstd", declare="gzip")
    assert liar.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert liar.data[:4] == b"\x28\xb5\x2f\xfd"  # zstd magic
    short = make_layer([file("short", b"abc", size=1000), file("never", b"")])
    with pytest.raises(tarfile.ReadError):
        list(tarfile.open(fileobj=io.BytesIO(gzip.decompress(short.data))))


def test_bomb_is_small_outside_and_honest_inside() -> None:
    layer = bomb(64 << 20)
    assert layer.size < 128 * 1024 and layer.uncompressed_size > 64 << 20
    h, n = hashlib.sha256(), 0
    d = zlib.decompressobj(31)
    for i in range(0, layer.size, 4096):
        out = d.decompress(layer.data[i:i + 4096])
        h.update(out)
        n += len(out)
    assert d.eof and n == layer.uncompressed_size
    assert "sha256:" + h.hexdigest() == layer.diff_id


def test_diff_id_override_and_config_extras() -> None:
    layer = make_layer([file("a", b"1")])
    bad = "sha256:" + "0" * 64
    image = make_image([layer], diff_ids=[bad], config={"os.version": "x"})
    assert image.config_json["rootfs"] == {"type": "layers", "diff_ids": [bad]}
    assert image.config_json["os.version"] == "x"


HOSTILE = [
    pytest.param(tarfile.TarInfo("../evil"), tarfile.PAX_FORMAT, "../evil", id="dotdot"),
    pytest.param(tarfile.TarInfo("/etc/x"), tarfile.PAX_FORMAT, "/etc/x", id="absolute"),
    pytest.param(tarfile.TarInfo("a//b/./c"), tarfile.USTAR_FORMAT, "a//b/./c", id="odd-slashes"),
    pytest.param(tarfile.TarInfo("d/" + "n" * 200), tarfile.GNU_FORMAT, "d/" + "n" * 200,
                 id="gnu-long-name"),
]


@pytest.mark.parametrize(("info", "fmt", "name"), HOSTILE)
def test_raw_members_keep_hostile_names(info: tarfile.TarInfo, fmt: int, name: str) -> None:
    layer = make_layer([raw(info, format=fmt)], compression="none")
    assert [m.name for m in tarfile.open(fileobj=io.BytesIO(layer.data))] == [name]


def test_binary_xattr_big_uid_and_pax_records_survive() -> None:
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    layer = make_layer([file("ping", b"x", uid=100000, gid=3_000_000,
                             xattrs={"security.capability": cap})], compression="none")
    (member,) = tarfile.open(fileobj=io.BytesIO(layer.data))
    assert (member.uid, member.gid) == (100000, 3_000_000)
    value = member.pax_headers["SCHILY.xattr.security.capability"]
    assert value.encode("utf-8", "surrogateescape") == cap


# -- indexes ------------------------------------------------------------------------------


@pytest.mark.parametrize("oci", [True, False], ids=["oci-index", "docker-list"])
def test_push_multi_platform_index_with_attestation(registry: Registry, repo: str,
                                                    oci: bool) -> None:
    layer = make_layer([file("arch", b"shared")])
    images = [make_image([layer], oci=oci),
              make_image([layer, make_layer([file("arm", b"v7")])], oci=oci,
                         architecture="arm", variant="v7")]
    index = make_index(images, oci=oci, attestation=True)
    assert push(registry, repo, "multi", index) == index.digest
    with httpx.Client(base_url=registry.url) as c:
        r = c.get(f"/v2/{repo}/manifests/multi", headers={"Accept": ACCEPT_ALL})
        assert r.content == index.manifest
        entries = r.json()["manifests"]
        assert [e["platform"] for e in entries] == [
            {"architecture": "amd64", "os": "linux"},
            {"architecture": "arm", "os": "linux", "variant": "v7"},
            {"architecture": "unknown", "os": "unknown"},
            {"architecture": "unknown", "os": "unknown"}]
        assert entries[2]["annotations"] == {
            "vnd.docker.reference.digest": images[0].digest,
            "vnd.docker.reference.type": "attestation-manifest"}
        for entry in entries:
            child = c.get(f"/v2/{repo}/manifests/{entry['digest']}",
                          headers={"Accept": entry["mediaType"]})
            assert child.status_code == 200
            assert "sha256:" + hashlib.sha256(child.content).hexdigest() == entry["digest"]
        att = index.attestations[0].manifest_json
        assert att["layers"][0]["mediaType"] == MT.IN_TOTO
    assert index.image_for("linux", "arm", "v7") is images[1]


def test_chunked_push_and_push_by_digest(registry: Registry, repo: str) -> None:
    image = make_image([make_layer([file("f", bytes(range(256)) * 400)], compression="none")])
    assert push(registry, repo, None, image, chunk_size=10_000) == image.digest
    with httpx.Client(base_url=registry.url) as c:
        # Stored by digest only: no tag exists, so the repository has no tag list.
        assert c.get(f"/v2/{repo}/tags/list").json()["errors"][0]["code"] == "NAME_UNKNOWN"
        r = c.get(f"/v2/{repo}/manifests/{image.digest}", headers={"Accept": MT.OCI_MANIFEST})
        assert r.content == image.manifest


# -- debian_like ---------------------------------------------------------------------------


def test_debian_like_is_deterministic_and_flattens_as_documented() -> None:
    a, b = debian_like(seed=7), debian_like(seed=7)
    assert [x.digest for x in a.layers()] == [x.digest for x in b.layers()]
    assert a.layers()[0].digest != debian_like(seed=8).layers()[0].digest
    assert len(a.base) >= 2900
    tree = a.expected()
    assert tree["bin"].kind == "symlink" and tree["bin"].target == "usr/bin"
    assert tree["usr/bin/passwd"].mode == 0o4755 and tree["usr/bin/chage"].gid == 42
    assert tree["tmp"].mode == 0o1777
    assert dict(tree["usr/bin/ping"].xattrs) == {"security.capability": PING_CAPABILITY}
    assert tree["dev/sda"].kind == "block" and tree["run/initctl"].kind == "fifo"
    assert "etc/motd" not in tree and "usr/share/doc/pkg0000" not in tree
    assert "usr/share/doc/pkg0000/copyright" not in tree and "usr/share/doc/pkg0001" in tree
    assert "var/cache/apt/pkgcache.bin" not in tree and "var/cache/apt/fresh.bin" in tree
    assert tree["etc/hostname"].data == b"debian-like-updated\n"
    assert tree["usr/local/bin/perl-again"].target == "usr/bin/perl"
    assert tree["etc/alternatives/vi"].target == "/usr/bin/mawk"


def test_debian_like_with_busybox() -> None:
    tree = debian_like(files=200, busybox=True).expected()
    assert tree["usr/bin/busybox"].data == Path("/bin/busybox").read_bytes()
    assert tree["usr/bin/sh"].target == "busybox"
