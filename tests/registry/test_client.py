"""RegistryClient against the real registry: manifests, HEAD, errors, retries, transport rules."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from pipeline.base.digest import digest_of, parse_digest
from pipeline.errors import BadDigest, BadReference, DigestMismatch, RegistryError
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import MANIFEST_MAX_BYTES
from pipeline.registry.client import RegistryClient
from pipeline.registry.credentials import NoCredentials
from pipeline.registry.retry import MAX_RETRY_AFTER_S
from tests.harness.clients import Sleeps
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.images import Image, file, make_image, make_layer
from tests.harness.push import push
from tests.harness.registry import Registry


@pytest.fixture
def image(registry: Registry, repo: str) -> Image:
    img = make_image([make_layer([file("hello", b"world\n")])])
    push(registry, repo, "v1", img)
    return img


def manifest_gets(proxy: FaultProxy) -> list[int]:
    return [r.status for r in proxy.requests(method="GET", path="/manifests/")]


def test_get_by_tag_and_digest(client: RegistryClient, registry: Registry, repo: str,
                               image: Image) -> None:
    by_tag = client.get_manifest(registry.host, repo, "v1")
    assert by_tag.body == image.manifest
    assert by_tag.content_type == mt.OCI_MANIFEST
    assert by_tag.digest == parse_digest(image.digest)
    by_digest = client.get_manifest(registry.host, repo, parse_digest(image.digest))
    assert by_digest == by_tag
    assert client.get_manifest(registry.host, repo, image.digest) == by_tag


def test_accept_header_asks_for_indexes_first(client: RegistryClient, registry: Registry,
                                              repo: str, image: Image) -> None:
    assert mt.MANIFEST_ACCEPT.split(", ") == [mt.OCI_INDEX, mt.DOCKER_MANIFEST_LIST,
                                              mt.OCI_MANIFEST, mt.DOCKER_MANIFEST]
    assert "v1+prettyjws" not in mt.MANIFEST_ACCEPT


def test_head_resolves_a_tag_without_a_get(client: RegistryClient, proxy: FaultProxy,
                                           repo: str, image: Image) -> None:
    head = client.head_manifest(proxy.host, repo, "v1")
    assert head.digest == parse_digest(image.digest)
    assert head.content_type == mt.OCI_MANIFEST and head.size == image.size
    assert [r.method for r in proxy.requests()] == ["HEAD"]


def test_head_of_missing_tag(client: RegistryClient, registry: Registry, repo: str,
                             image: Image, sleeps: Sleeps) -> None:
    with pytest.raises(RegistryError) as info:
        client.head_manifest(registry.host, repo, "nope")
    assert info.value.status == 404 and sleeps == []


def test_missing_tag_is_404_with_registry_code(client: RegistryClient, proxy: FaultProxy,
                                               repo: str, image: Image, sleeps: Sleeps) -> None:
    with pytest.raises(RegistryError) as info:
        client.get_manifest(proxy.host, repo, "nope")
    err = info.value
    assert (err.status, err.code, err.temporary) == (404, "MANIFEST_UNKNOWN", False)
    assert str(err) == (f"GET http://{proxy.host}/v2/{repo}/manifests/nope: 404 Not Found"
                        " (MANIFEST_UNKNOWN: manifest unknown): not found; check the repository"
                        " name and the tag or digest")
    assert sleeps == [] and manifest_gets(proxy) == [404]


def test_missing_repository_is_404(client: RegistryClient, registry: Registry,
                                   sleeps: Sleeps) -> None:
    with pytest.raises(RegistryError) as info:
        client.get_manifest(registry.host, "no/such/repo", "v1")
    # distribution 2.8 says MANIFEST_UNKNOWN here, not NAME_UNKNOWN.
    assert (info.value.status, info.value.code, info.value.temporary) == (
        404, "MANIFEST_UNKNOWN", False)
    assert sleeps == []


def test_403_fails_at_once(client: RegistryClient, proxy: FaultProxy, repo: str,
                           image: Image, sleeps: Sleeps) -> None:
    proxy.add(Fault.status(403), path="/manifests/")
    with pytest.raises(RegistryError) as info:
        client.get_manifest(proxy.host, repo, "v1")
    assert (info.value.status, info.value.code) == (403, "DENIED")
    assert str(info.value).endswith("403 Forbidden (DENIED: injected by the fault proxy: 403):"
                                    " access denied; check that your account may pull this"
                                    " repository")
    assert sleeps == [] and manifest_gets(proxy) == [403]


@pytest.mark.parametrize("fault, waited", [
    (Fault.too_many_requests(retry_after=2), [2.0]),
    (Fault.too_many_requests(retry_after=None, retry_after_date=30), "date"),
    (Fault.unavailable(), [0.25]),
    (Fault.status(500), [0.25]),
    (Fault.status(502), [0.25]),
    (Fault.reset(after_bytes=0), [0.25]),
    (Fault.reset(after_bytes=20), [0.25]),
], ids=["429-seconds", "429-http-date", "503", "500", "502", "reset-before-body",
        "truncated-body"])
def test_temporary_faults_are_retried(client: RegistryClient, proxy: FaultProxy, repo: str,
                                      image: Image, sleeps: Sleeps, fault: Fault,
                                      waited: list[float] | str) -> None:
    proxy.add(fault, path="/manifests/")
    assert client.get_manifest(proxy.host, repo, "v1").body == image.manifest
    if waited == "date":
        # An HTTP date 30 s ahead, at one-second resolution.
        assert len(sleeps) == 1 and 28 <= sleeps[0] <= 31
    else:
        assert sleeps == waited
    assert len(manifest_gets(proxy)) == 2


def test_retries_are_bounded(client: RegistryClient, proxy: FaultProxy, repo: str,
                             image: Image, sleeps: Sleeps) -> None:
    proxy.add(Fault.unavailable(), path="/manifests/", times=None)
    with pytest.raises(RegistryError) as info:
        client.get_manifest(proxy.host, repo, "v1")
    assert info.value.status == 503 and info.value.temporary
    assert sleeps == [0.25, 0.5, 1.0, 2.0]  # base 0.5 s doubling, jitter at its low end
    assert len(manifest_gets(proxy)) == 5


def test_retry_after_beyond_cap_fails_now(client: RegistryClient, proxy: FaultProxy,
                                          repo: str, image: Image, sleeps: Sleeps) -> None:
    proxy.add(Fault.too_many_requests(retry_after=3600), path="/manifests/")
    with pytest.raises(RegistryError) as info:
        client.get_manifest(proxy.host, repo, "v1")
    assert str(info.value).endswith(
        f"the registry asks to retry after 3600 s, longer than the {MAX_RETRY_AFTER_S:.0f} s"
        " we wait; try again later")
    assert sleeps == []


def test_lying_docker_content_digest(client: RegistryClient, proxy: FaultProxy, repo: str,
                                     image: Image) -> None:
    lie = str(digest_of(b"something else"))
    proxy.add(Fault.headers(docker_content_digest=lie), path="/manifests/")
    with pytest.raises(DigestMismatch) as info:
        client.get_manifest(proxy.host, repo, "v1")
    assert (info.value.expected, info.value.got) == (lie, image.digest)


def test_malformed_docker_content_digest(client: RegistryClient, proxy: FaultProxy,
                                         repo: str, image: Image) -> None:
    proxy.add(Fault.headers(docker_content_digest="sha256:../../x"), path="/manifests/")
    with pytest.raises(RegistryError, match="invalid Docker-Content-Digest header"):
        client.get_manifest(proxy.host, repo, "v1")


def test_pull_by_digest_checks_the_bytes(client: RegistryClient, proxy: FaultProxy,
                                         repo: str, image: Image) -> None:
    other = make_image([make_layer([file("other", b"x")])]).manifest
    proxy.add(Fault.body(other, headers={"Content-Type": mt.OCI_MANIFEST}), path="/manifests/")
    with pytest.raises(DigestMismatch) as info:
        client.get_manifest(proxy.host, repo, image.digest)
    assert (info.value.expected, info.value.got) == (image.digest, str(digest_of(other)))


def test_oversized_manifest_refused(client: RegistryClient, proxy: FaultProxy, repo: str,
                                    image: Image) -> None:
    huge = json.dumps({"pad": "x" * MANIFEST_MAX_BYTES}).encode()
    proxy.add(Fault.body(huge, headers={"Content-Type": mt.OCI_MANIFEST}), path="/manifests/")
    with pytest.raises(RegistryError) as info:
        client.get_manifest(proxy.host, repo, "v1")
    assert f"manifest is {len(huge)} bytes, more than the {MANIFEST_MAX_BYTES} byte limit" in str(
        info.value)
    assert not info.value.temporary


def test_redirect_to_link_local_is_refused(client: RegistryClient, proxy: FaultProxy,
                                           repo: str, image: Image) -> None:
    proxy.add(Fault.status(307, headers={"Location": "http://169.254.169.254/latest/meta-data"},
                           body=b""), path="/manifests/")
    with pytest.raises(RegistryError) as info:
        client.get_manifest(proxy.host, repo, "v1")
    assert str(info.value) == ("GET http://169.254.169.254/latest/meta-data: refusing a request"
                               " to a link-local or unspecified address (a redirect from the"
                               " registry?)")


def test_blob_redirect_to_other_origin_is_followed(client: RegistryClient, proxy: FaultProxy,
                                                   repo: str, image: Image) -> None:
    proxy.add(Fault.redirect(), path="/blobs/")
    layer = image.layers[0]
    with client.open_blob(proxy.host, repo, parse_digest(layer.digest)) as stream:
        assert b"".join(stream.chunks()) == layer.data
    (served,) = proxy.requests(listener="redirect")
    assert served.status == 200


def test_shared_between_threads(client: RegistryClient, registry: Registry, repo: str,
                                image: Image) -> None:
    def get(_: int) -> bytes:
        return client.get_manifest(registry.host, repo, "v1").body

    with ThreadPoolExecutor(8) as pool:
        bodies = set(pool.map(get, range(32)))
    assert bodies == {image.manifest}


@pytest.mark.parametrize("registry_name, insecure, scheme", [
    ("127.0.0.1:5000", frozenset(), "http"),
    ("127.8.9.10", frozenset(), "http"),
    ("localhost:5000", frozenset(), "http"),
    ("[::1]:5000", frozenset(), "http"),
    ("docker.io", frozenset(), "https"),
    ("r.example:5000", frozenset(), "https"),
    ("10.0.0.5:5000", frozenset(), "https"),
    ("r.example:5000", frozenset({"r.example:5000"}), "http"),
    ("r.example:5000", frozenset({"r.example"}), "http"),
    ("r.example:5000", frozenset({"other.example"}), "https"),
    ("localhost.evil.example", frozenset(), "https"),
], ids=lambda v: str(v) if not isinstance(v, frozenset) else ",".join(sorted(v)) or "-")
def test_scheme(registry_name: str, insecure: frozenset[str], scheme: str) -> None:
    with RegistryClient(credentials=NoCredentials(), insecure_hosts=insecure) as c:
        assert c.scheme(registry_name) == scheme


def test_urls(client: RegistryClient) -> None:
    d = "sha256:" + "a" * 64
    assert client.url("docker.io", "library/alpine", "manifests", "3.19") == (
        "https://registry-1.docker.io/v2/library/alpine/manifests/3.19")
    assert client.url("[::1]:5000", "a/b", "blobs", parse_digest(d)) == (
        f"http://[::1]:5000/v2/a/b/blobs/{d}")


@pytest.mark.parametrize("repository, reference", [
    ("../etc", "v1"), ("a/b?x=1", "v1"), ("A/b", "v1"), ("a", "v1/../../x"), ("a", "v1?x"),
    ("a", "sha256:../../x"),
], ids=["repo-traversal", "repo-query", "repo-upper", "tag-traversal", "tag-query",
        "digest-traversal"])
def test_url_parts_are_validated(client: RegistryClient, repository: str, reference: str) -> None:
    with pytest.raises((BadReference, BadDigest)):
        client.url("r.example", repository, "manifests", reference)
