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
from tests.harness.expected import expected_tree
from tests.harness.faultproxy import Fault
from tests.harness.httpauth import BearerAuth, parse_challenge
from tests.harness.images import (
    MT,
    Layer,
    bomb,
    chardev,
    dir,
    fifo,
    file,
    hardlink,
    make_image,
    make_index,
    make_layer,
    opaque,
    raw,
    symlink,
    tar_bytes,
    whiteout,
)
from tests.harness.push import push
from tests.harness.registry import Registry, start_registry
from tests.harness.tokenserver import TokenServer

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
    assert [x.digest for x in a.layers("none")] == [x.digest for x in b.layers("none")]
    assert a.base != debian_like(seed=8).base
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


def test_expected_tree_opaque_root_hides_every_lower_entry() -> None:
    lower = [file("a", b"1"), dir("d"), file("d/x", b"2")]
    upper = [opaque(""), file("b", b"3"), dir("d"), file("d/y", b"4")]
    assert sorted(expected_tree([lower, upper])) == ["b", "d", "d/y"]


def test_debian_like_with_busybox() -> None:
    tree = debian_like(files=200, busybox=True).expected()
    assert tree["usr/bin/busybox"].data == Path("/bin/busybox").read_bytes()
    assert tree["usr/bin/sh"].target == "busybox"


# -- auth ---------------------------------------------------------------------------------


def _manifest_get(url: str, repo: str, *, token: str | None = None,
                  auth: object = None) -> httpx.Response:
    headers = {"Accept": MT.OCI_MANIFEST}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{url}/v2/{repo}/manifests/v1", headers=headers,
                     auth=auth)  # type: ignore[arg-type]


def test_token_flow_anonymous_pull_of_a_public_repo(token_registry: Registry,
                                                    token_server: TokenServer, repo: str) -> None:
    image = make_image([make_layer([file("a", b"public")])])
    push(token_registry, repo, "v1", image)
    token_server.reset()
    challenge = _manifest_get(token_registry.url, repo)
    assert challenge.status_code == 401
    scheme, params = parse_challenge(challenge.headers["www-authenticate"])
    assert (scheme, params) == ("bearer", {
        "realm": token_server.realm, "service": token_server.service,
        "scope": f"repository:{repo}:pull"})
    got = httpx.get(params["realm"], params={"service": params["service"],
                                            "scope": params["scope"]}).json()
    assert set(got) == {"token", "access_token", "expires_in", "issued_at"}
    assert got["expires_in"] == 60
    ok = _manifest_get(token_registry.url, repo, token=got["token"])
    assert ok.status_code == 200 and ok.content == image.manifest
    (logged,) = token_server.requests()
    assert (logged.method, logged.scopes, logged.who, logged.status) == (
        "GET", (f"repository:{repo}:pull",), None, 200)


def test_token_flow_private_repo_needs_the_user(token_registry: Registry,
                                                token_server: TokenServer) -> None:
    repo = "private/harness"
    image = make_image([make_layer([file("a", b"secret")])])
    push(token_registry, repo, "v1", image)
    anonymous = _manifest_get(token_registry.url, repo, auth=BearerAuth())
    assert anonymous.status_code == 401
    assert 'error="insufficient_scope"' in anonymous.headers["www-authenticate"]
    user = _manifest_get(token_registry.url, repo, auth=BearerAuth("bob", "builder"))
    assert user.status_code == 200
    wrong = _manifest_get(token_registry.url, repo, auth=BearerAuth("bob", "nope"))
    assert wrong.status_code == 401
    assert [r.status for r in token_server.requests(scope=f"repository:{repo}:pull")][-3:] == [
        200, 200, 401]


def test_token_narrowing_gives_insufficient_scope_once(token_registry: Registry,
                                                       token_server: TokenServer,
                                                       repo: str) -> None:
    push(token_registry, repo, "v1", make_image([make_layer([file("a", b"n")])]))
    token_server.narrow(1)
    first = _manifest_get(token_registry.url, repo, auth=BearerAuth())
    assert first.status_code == 401
    assert 'error="insufficient_scope"' in first.headers["www-authenticate"]
    assert _manifest_get(token_registry.url, repo, auth=BearerAuth()).status_code == 200


def test_token_oauth_password_and_refresh_grants(token_registry: Registry,
                                                 token_server: TokenServer, repo: str) -> None:
    push(token_registry, repo, "v1", make_image([make_layer([file("a", b"o")])]))
    token_server.reset()
    form = {"grant_type": "password", "username": "alice", "password": "wonderland",
            "service": token_server.service, "client_id": "harness", "access_type": "offline",
            "scope": f"repository:{repo}:pull"}
    got = httpx.post(token_server.realm, data=form).json()
    assert got["scope"] == f"repository:{repo}:pull" and got["refresh_token"]
    refreshed = httpx.post(token_server.realm, data={
        "grant_type": "refresh_token", "refresh_token": got["refresh_token"],
        "service": token_server.service, "client_id": "harness",
        "scope": f"repository:{repo}:pull"}).json()
    ok = _manifest_get(token_registry.url, repo, token=refreshed["access_token"])
    assert ok.status_code == 200
    bad = httpx.post(token_server.realm, data={**form, "grant_type": "refresh_token",
                                               "refresh_token": "idt-unknown"})
    assert bad.status_code == 401
    assert [(r.grant, r.who, r.status) for r in token_server.requests()] == [
        ("password", "alice", 200), ("refresh_token", "alice", 200),
        ("refresh_token", None, 401)]


def test_token_server_fail_knob(token_server: TokenServer) -> None:
    token_server.fail(503, count=1)
    assert httpx.get(token_server.realm, params={"service": token_server.service}
                     ).status_code == 503
    assert httpx.get(token_server.realm, params={"service": token_server.service}
                     ).status_code == 200


def test_token_registry_accepts_libtrust_kid_header(tmp_path: Path, repo: str) -> None:
    with TokenServer(key_header="kid") as server, start_registry(
            tmp_path, auth="token", token_server=server) as reg:
        push(reg, repo, "v1", make_image([make_layer([file("a", b"kid")])]))
        assert _manifest_get(reg.url, repo, auth=BearerAuth()).status_code == 200


def test_basic_auth_registry(basic_registry: Registry, repo: str) -> None:
    image = make_image([make_layer([file("a", b"basic")])])
    push(basic_registry, repo, "v1", image)
    anonymous = _manifest_get(basic_registry.url, repo)
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == 'Basic realm="basic-realm"'
    assert _manifest_get(basic_registry.url, repo, auth=("bob", "builder")).status_code == 200
    assert _manifest_get(basic_registry.url, repo, auth=("bob", "wrong")).status_code == 401


# -- fault proxy --------------------------------------------------------------------------


@pytest.fixture
def blob_repo(registry: Registry, repo: str) -> tuple[str, Layer]:
    """A repository holding one 4 MiB incompressible layer."""
    import random

    layer = make_layer([file("big", random.Random(1).randbytes(4 << 20))], compression="none")
    push(registry, repo, "v1", make_image([layer]))
    return repo, layer


def test_proxy_streams_a_blob_and_honours_range(fault_proxy, blob_repo) -> None:
    repo, layer = blob_repo
    proxy = fault_proxy()
    with httpx.Client(base_url=proxy.url) as c:
        assert c.get(f"/v2/{repo}/blobs/{layer.digest}").content == layer.data
        part = c.get(f"/v2/{repo}/blobs/{layer.digest}", headers={"Range": "bytes=1000-"})
    assert part.status_code == 206
    assert part.headers["content-range"] == f"bytes 1000-{layer.size - 1}/{layer.size}"
    assert part.content == layer.data[1000:]
    assert [(r.status, r.range) for r in proxy.requests(path="/blobs/")] == [
        (200, None), (206, "bytes=1000-")]


def test_proxy_reset_after_n_bytes(fault_proxy, blob_repo) -> None:
    repo, layer = blob_repo
    proxy = fault_proxy()
    proxy.add(Fault.reset(after_bytes=100_000), path="/blobs/")
    with pytest.raises((httpx.ReadError, httpx.RemoteProtocolError)):
        httpx.get(f"{proxy.url}/v2/{repo}/blobs/{layer.digest}")
    (entry,) = proxy.requests(path="/blobs/")
    assert (entry.status, entry.fault, entry.body_bytes) == (200, "reset", 100_000)
    assert httpx.get(f"{proxy.url}/v2/{repo}/blobs/{layer.digest}").content == layer.data


def test_proxy_429_retry_after_seconds_and_date_then_503(fault_proxy, blob_repo) -> None:
    import email.utils
    import time

    repo, layer = blob_repo
    proxy = fault_proxy()
    proxy.add(Fault.too_many_requests(retry_after=2), path="/blobs/")
    proxy.add(Fault.too_many_requests(retry_after=None, retry_after_date=30), path="/blobs/",
              nth=2)
    proxy.add(Fault.unavailable(), path="/blobs/", nth=3)
    url = f"{proxy.url}/v2/{repo}/blobs/{layer.digest}"
    first, second, third, fourth = (httpx.get(url) for _ in range(4))
    assert (first.status_code, first.headers["retry-after"]) == (429, "2")
    assert first.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    when = email.utils.parsedate_to_datetime(second.headers["retry-after"]).timestamp()
    assert second.status_code == 429 and time.time() < when <= time.time() + 31
    assert third.status_code == 503 and "retry-after" not in third.headers
    assert fourth.status_code == 200 and fourth.content == layer.data


def test_proxy_corrupts_bytes_but_keeps_length(fault_proxy, blob_repo) -> None:
    repo, layer = blob_repo
    proxy = fault_proxy()
    proxy.add(Fault.corrupt(offset=10, length=3), path="/blobs/")
    got = httpx.get(f"{proxy.url}/v2/{repo}/blobs/{layer.digest}").content
    assert len(got) == layer.size and got != layer.data
    assert [i for i in range(64) if got[i] != layer.data[i]] == [10, 11, 12]
    assert got[64:] == layer.data[64:]


def test_proxy_redirects_blob_gets_to_another_origin(fault_proxy, blob_repo) -> None:
    repo, layer = blob_repo
    proxy = fault_proxy()
    proxy.add(Fault.redirect(), path="/blobs/", times=None)
    url = f"{proxy.url}/v2/{repo}/blobs/{layer.digest}"
    moved = httpx.get(url)
    assert moved.status_code == 307
    assert moved.headers["location"].startswith(f"{proxy.redirect_url}/presigned/")
    assert proxy.redirect_url.startswith("http://localhost:")
    followed = httpx.get(url, headers={"Authorization": "Bearer secret"}, follow_redirects=True)
    assert followed.content == layer.data
    resumed = httpx.get(moved.headers["location"], headers={"Range": "bytes=5-9",
                                                            "Authorization": "Bearer x"})
    assert resumed.status_code == 206 and resumed.content == layer.data[5:10]
    assert [(r.listener, r.authorization) for r in proxy.requests(listener="redirect")] == [
        ("redirect", False), ("redirect", True)]


def test_proxy_rewrites_headers_and_bodies(fault_proxy, registry: Registry, repo: str) -> None:
    image = make_image([make_layer([file("a", b"h")])])
    push(registry, repo, "v1", image)
    proxy = fault_proxy()
    proxy.add(Fault.headers(content_type=MT.DOCKER_MANIFEST, docker_content_digest=None),
              path="/manifests/")
    proxy.add(Fault.body(b'{"schemaVersion": 1}', headers={"Content-Type": MT.OCI_MANIFEST}),
              path="/manifests/", nth=2)
    url = f"{proxy.url}/v2/{repo}/manifests/v1"
    changed = httpx.get(url, headers={"Accept": MT.OCI_MANIFEST})
    assert changed.headers["content-type"] == MT.DOCKER_MANIFEST
    assert "docker-content-digest" not in changed.headers and changed.content == image.manifest
    assert httpx.get(url).content == b'{"schemaVersion": 1}'


def test_proxy_in_front_of_token_registry_carries_auth_and_uploads(
        fault_proxy, token_registry: Registry, repo: str) -> None:
    proxy = fault_proxy(token_registry)
    image = make_image([make_layer([file("a", b"via proxy")])])
    assert push(proxy, repo, "v1", image, chunk_size=100) == image.digest
    proxy.add(Fault.redirect(), path="/blobs/")
    got = httpx.get(f"{proxy.url}/v2/{repo}/blobs/{image.layers[0].digest}",
                    auth=BearerAuth("alice", "wonderland"), follow_redirects=True)
    assert got.status_code == 200 and got.content == image.layers[0].data
    uploads = proxy.requests(method="PATCH")
    assert uploads and all(r.listener == "proxy" for r in uploads)
