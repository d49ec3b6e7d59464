"""Reference parsing and normalisation, checked against Docker's own behaviour."""

from __future__ import annotations

import pytest

from pipeline.base.digest import parse_digest
from pipeline.errors import BadReference
from pipeline.oci.reference import (
    ImageRef,
    api_host_for,
    is_link_local_host,
    is_loopback_host,
    parse_reference,
    split_host_port,
    validate_registry,
)

HEX = "a" * 64
DIGEST = f"sha256:{HEX}"

# (input, registry, repository, tag, digest, canonical str)
GOOD = [
    ("alpine", "docker.io", "library/alpine", "latest", None, "docker.io/library/alpine:latest"),
    ("alpine:3.19", "docker.io", "library/alpine", "3.19", None, "docker.io/library/alpine:3.19"),
    ("library/alpine", "docker.io", "library/alpine", "latest", None,
     "docker.io/library/alpine:latest"),
    ("docker.io/alpine", "docker.io", "library/alpine", "latest", None,
     "docker.io/library/alpine:latest"),
    ("index.docker.io/alpine", "docker.io", "library/alpine", "latest", None,
     "docker.io/library/alpine:latest"),
    ("registry-1.docker.io/foo/bar:1", "docker.io", "foo/bar", "1", None, "docker.io/foo/bar:1"),
    ("user/app", "docker.io", "user/app", "latest", None, "docker.io/user/app:latest"),
    ("localhost/foo", "localhost", "foo", "latest", None, "localhost/foo:latest"),
    ("localhost:5000/foo/bar:v1", "localhost:5000", "foo/bar", "v1", None,
     "localhost:5000/foo/bar:v1"),
    ("127.0.0.1:5000/x", "127.0.0.1:5000", "x", "latest", None, "127.0.0.1:5000/x:latest"),
    ("[::1]:5000/foo/bar:v1", "[::1]:5000", "foo/bar", "v1", None, "[::1]:5000/foo/bar:v1"),
    ("[2001:db8::1]/foo", "[2001:db8::1]", "foo", "latest", None, "[2001:db8::1]/foo:latest"),
    ("example.com/a/b/c", "example.com", "a/b/c", "latest", None, "example.com/a/b/c:latest"),
    ("example:5000/a", "example:5000", "a", "latest", None, "example:5000/a:latest"),
    # Docker: an uppercase first element can only be a registry host.
    ("Example/a", "Example", "a", "latest", None, "Example/a:latest"),
    ("ghcr.io/o/r@" + DIGEST, "ghcr.io", "o/r", None, DIGEST, f"ghcr.io/o/r@{DIGEST}"),
    ("ghcr.io/o/r:v2@" + DIGEST, "ghcr.io", "o/r", "v2", DIGEST, f"ghcr.io/o/r:v2@{DIGEST}"),
    ("alpine@sha512:" + "b" * 128, "docker.io", "library/alpine", None, "sha512:" + "b" * 128,
     "docker.io/library/alpine@sha512:" + "b" * 128),
    # Separators: one '.', one or two '_', any number of '-'.
    ("x/a.b_c__d---e", "docker.io", "x/a.b_c__d---e", "latest", None,
     "docker.io/x/a.b_c__d---e:latest"),
    ("x:" + "T" * 128, "docker.io", "library/x", "T" * 128, None,
     "docker.io/library/x:" + "T" * 128),
    ("x:_weird.Tag-1", "docker.io", "library/x", "_weird.Tag-1", None,
     "docker.io/library/x:_weird.Tag-1"),
    # Docker's known quirk: no '/', so ':5000' is a tag, not a port.
    ("localhost:5000", "docker.io", "library/localhost", "5000", None,
     "docker.io/library/localhost:5000"),
    ("e.com/" + "a" * 255, "e.com", "a" * 255, "latest", None, "e.com/" + "a" * 255 + ":latest"),
]


@pytest.mark.parametrize("text, registry, repository, tag, digest, canonical", GOOD,
                         ids=[g[0][:40] for g in GOOD])
def test_parse_good(text: str, registry: str, repository: str, tag: str | None,
                    digest: str | None, canonical: str) -> None:
    ref = parse_reference(text)
    assert ref == ImageRef(registry, repository, tag,
                           parse_digest(digest) if digest else None)
    assert str(ref) == canonical
    assert parse_reference(str(ref)) == ref


# (id, input, exact reason)
BAD = [
    ("empty", "", "repository name must have at least one component"),
    ("bare-64-hex", HEX, "cannot specify 64-byte hexadecimal strings as a repository name;"
     " to pin a digest write NAME@sha256:<hex>"),
    ("uppercase-repo", "docker.io/Library/alpine",
     "repository name 'Library/alpine' must be lowercase"),
    ("uppercase-single", "Alpine", "repository name 'library/Alpine' must be lowercase"),
    ("uppercase-after-host", "ghcr.io/Org/x", "repository name 'Org/x' must be lowercase"),
    ("too-long", "e.com/" + "a" * 256,
     "repository name must not be more than 255 characters (got 256)"),
    ("tag-too-long", "x:" + "t" * 129, "tag is 129 characters, at most 128 allowed"),
    ("empty-tag", "x:", "empty tag after ':'"),
    ("tag-leading-dot", "x:.v1", "invalid tag format '.v1': letters, digits, '_', '.' and '-',"
     " not starting with '.' or '-'"),
    ("tag-leading-dash", "x:-v1", "invalid tag format '-v1': letters, digits, '_', '.' and '-',"
     " not starting with '.' or '-'"),
    ("tag-bad-char", "x:v+1", "invalid tag format 'v+1': letters, digits, '_', '.' and '-',"
     " not starting with '.' or '-'"),
    ("double-slash", "e.com//x", "invalid repository path component '': lowercase letters and"
     " digits, separated by '.', '_', '__' or dashes, not at either end"),
    ("trailing-slash", "e.com/x/", "invalid repository path component '': lowercase letters and"
     " digits, separated by '.', '_', '__' or dashes, not at either end"),
    ("triple-underscore", "a___b", "invalid repository path component 'a___b': lowercase letters"
     " and digits, separated by '.', '_', '__' or dashes, not at either end"),
    ("double-dot", "a..b", "invalid repository path component 'a..b': lowercase letters"
     " and digits, separated by '.', '_', '__' or dashes, not at either end"),
    ("leading-sep", "e.com/-a", "invalid repository path component '-a': lowercase letters"
     " and digits, separated by '.', '_', '__' or dashes, not at either end"),
    ("path-traversal", "e.com/../etc", "invalid repository path component '..': lowercase"
     " letters and digits, separated by '.', '_', '__' or dashes, not at either end"),
    ("query-in-name", "e.com/a?b=c", "invalid repository path component 'a?b=c': lowercase"
     " letters and digits, separated by '.', '_', '__' or dashes, not at either end"),
    ("bad-port", "e.com:99999/a", "registry port '99999' must be a number from 1 to 65535"),
    ("port-not-number", "e.com:x1/a", "registry port 'x1' must be a number from 1 to 65535"),
    ("bad-ipv6", "[::zz]:5000/a", "registry '[::zz]:5000' has an invalid IPv6 address in"
     " brackets"),
    ("ipv6-zone-id", "[fe80::1%eth0]:5000/a", "registry '[fe80::1%eth0]:5000' has an invalid"
     " IPv6 address in brackets"),
    ("host-underscore", "my_host.com/a", "invalid registry host 'my_host.com': DNS labels of"
     " letters, digits and '-', an IPv4 address, or an IPv6 address in brackets"),
    ("host-leading-dash", "-e.com/a", "invalid registry host '-e.com': DNS labels of"
     " letters, digits and '-', an IPv4 address, or an IPv6 address in brackets"),
    ("two-ats", f"a@{DIGEST}@{DIGEST}", "more than one '@' (expected NAME[:TAG][@DIGEST])"),
    ("short-digest", "a@sha256:abc", "bad digest after '@': expected 64 lowercase hex"
     " characters after 'sha256:'"),
    ("unknown-algorithm", "a@md5:" + "a" * 32, "bad digest after '@': unsupported algorithm"
     " 'md5' (supported: sha256, sha512)"),
    ("digest-no-colon", "a@" + HEX, "bad digest after '@': expected 'algorithm:hex', e.g."
     " 'sha256:<64 hex characters>'"),
    ("space", "al pine", "invalid repository path component 'al pine': lowercase letters and"
     " digits, separated by '.', '_', '__' or dashes, not at either end"),
]


@pytest.mark.parametrize("text, reason", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_parse_bad(text: str, reason: str) -> None:
    with pytest.raises(BadReference) as info:
        parse_reference(text)
    assert info.value.reason == reason
    assert str(info.value) == f"invalid image reference {text!r}: {reason}"


def test_reference_and_api_host() -> None:
    hub = parse_reference("alpine")
    assert hub.api_host == "registry-1.docker.io"
    assert hub.reference == "latest"
    assert hub.name == "docker.io/library/alpine"
    pinned = parse_reference(f"alpine:3@{DIGEST}")
    assert pinned.reference == DIGEST  # the digest wins over the tag
    local = parse_reference("localhost:5000/a")
    assert local.api_host == "localhost:5000"


def test_with_registry_for_mirrors() -> None:
    ref = parse_reference("alpine:3.19")
    mirrored = ref.with_registry("mirror.example.com:5000")
    assert str(mirrored) == "mirror.example.com:5000/library/alpine:3.19"
    assert mirrored.with_registry("index.docker.io") == ref
    with pytest.raises(BadReference) as err:
        ref.with_registry("bad host")
    assert str(err.value) == ("invalid image reference 'bad host': invalid registry host "
                              "'bad host': DNS labels of letters, digits and '-', an IPv4 "
                              "address, or an IPv6 address in brackets")


def test_with_digest_keeps_tag() -> None:
    ref = parse_reference("alpine:3.19").with_digest(parse_digest(DIGEST))
    assert str(ref) == f"docker.io/library/alpine:3.19@{DIGEST}"


@pytest.mark.parametrize("registry, host, port", [
    ("e.com", "e.com", None), ("e.com:5000", "e.com", 5000), ("[::1]:5000", "::1", 5000),
    ("[::1]", "::1", None), ("127.0.0.1:1", "127.0.0.1", 1)])
def test_split_host_port(registry: str, host: str, port: int | None) -> None:
    assert split_host_port(registry) == (host, port)


@pytest.mark.parametrize("host, loopback, link_local", [
    ("localhost", True, False), ("LOCALHOST", True, False), ("127.0.0.1", True, False),
    ("127.9.8.7", True, False), ("::1", True, False), ("[::1]", True, False),
    ("169.254.169.254", False, True), ("fe80::1", False, True), ("0.0.0.0", False, True),
    ("10.0.0.1", False, False), ("example.com", False, False), ("localhost.evil.com", False, False),
])
def test_host_classes(host: str, loopback: bool, link_local: bool) -> None:
    assert is_loopback_host(host) is loopback
    assert is_link_local_host(host) is link_local


def test_api_host_and_validate_registry() -> None:
    assert api_host_for("docker.io") == "registry-1.docker.io"
    assert api_host_for("ghcr.io") == "ghcr.io"
    assert validate_registry("registry-1.docker.io") == "docker.io"
    with pytest.raises(BadReference) as err:
        validate_registry("")
    assert str(err.value) == ("invalid image reference '': a registry must be a non-empty "
                              "host[:port] string")
