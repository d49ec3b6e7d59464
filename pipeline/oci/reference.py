"""Image references, parsed and normalised the way Docker does it (no I/O).

Grammar (distribution/reference, regexp.go)::

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ domain "/" ] path
    domain     := host [ ":" port ]
    host       := domain-name | "[" IPv6 "]"
    path       := component ( "/" component )*
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}

Normalisation (distribution/reference, normalize.go): the first path
element is a registry only if it contains "." or ":", is "localhost", or has
uppercase letters; otherwise the registry is Docker Hub (``docker.io``) and a
one-component name gets ``library/``. ``index.docker.io`` and
``registry-1.docker.io`` are Docker Hub aliases. A name with neither tag nor
digest gets ``latest``; when both are given the digest wins for pulling.

Nothing here trusts its input: every part is checked against the grammar
before it can reach a URL, a cache path or a log line. Stricter than Docker
in two places, on purpose: an IPv6 literal must be a real IPv6 address and a
port must be 1-65535 (Docker's regular expression accepts ``[:::]`` and
port 99999, which only fail later, less clearly).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, replace

from pipeline.base.digest import Digest, parse_digest
from pipeline.errors import BadDigest, BadReference

__all__ = [
    "DOCKER_HUB",
    "DOCKER_HUB_API_HOST",
    "DEFAULT_TAG",
    "ImageRef",
    "parse_reference",
    "validate_registry",
    "validate_repository",
    "validate_tag",
    "api_host_for",
    "split_host_port",
    "is_loopback_host",
    "is_link_local_host",
    "is_forbidden_address",
    "host_address",
    "METADATA_ADDRESSES",
]

DOCKER_HUB = "docker.io"
# Docker Hub's name in references is not the host that serves its API.
DOCKER_HUB_API_HOST = "registry-1.docker.io"
DOCKER_HUB_ALIASES = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})
OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

# distribution/reference NameTotalLengthMax: the repository path (without the
# registry) may not exceed 255 characters; registries refuse longer names.
NAME_MAX_CHARS = 255
# The tag grammar allows one leading character plus 127 more.
TAG_MAX_CHARS = 128

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DOMAIN_NAME = re.compile(
    r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])"
    r"(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*"
)
_IPV6_LITERAL = re.compile(r"\[(.*)\]")
_PORT = re.compile(r"[0-9]+")
_BARE_ID = re.compile(r"[a-f0-9]{64}")


@dataclass(frozen=True, slots=True)
class ImageRef:
    """A normalised image reference: ``registry/repository[:tag][@digest]``."""

    registry: str
    """As written after normalisation: ``docker.io``, ``localhost:5000``, ``[::1]:5000``."""
    repository: str
    """The path, e.g. ``library/alpine``."""
    tag: str | None
    digest: Digest | None

    @property
    def api_host(self) -> str:
        """The host (and port) that serves the registry API."""
        return api_host_for(self.registry)

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def reference(self) -> str:
        """What goes after ``/manifests/``: the digest if pinned, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        return self.tag or DEFAULT_TAG

    def with_registry(self, registry: str) -> ImageRef:
        """The same repository, tag and digest on another registry (a mirror)."""
        return replace(self, registry=validate_registry(registry))

    def with_digest(self, digest: Digest) -> ImageRef:
        """This reference pinned to a manifest digest (the tag is kept for display)."""
        return replace(self, digest=digest)

    def __str__(self) -> str:
        text = self.name
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text


def parse_reference(text: str) -> ImageRef:
    """Parse and normalise an image reference; raise BadReference with the rule broken."""
    if not isinstance(text, str):
        raise BadReference(repr(text), "an image reference must be a string")
    if not text:
        raise BadReference(text, "repository name must have at least one component")
    if _BARE_ID.fullmatch(text):
        # Docker's own refusal: a bare image ID is not a name.
        raise BadReference(
            text, "cannot specify 64-byte hexadecimal strings as a repository name;"
            " to pin a digest write NAME@sha256:<hex>")
    name_and_tag, at, digest_text = text.partition("@")
    digest: Digest | None = None
    if at:
        if "@" in digest_text:
            raise BadReference(text, "more than one '@' (expected NAME[:TAG][@DIGEST])")
        try:
            digest = parse_digest(digest_text)
        except BadDigest as err:
            raise BadReference(text, f"bad digest after '@': {err.reason}") from None
    # A tag is whatever follows the last ':' that comes after the last '/';
    # a ':' before it belongs to the registry's port.
    colon = name_and_tag.rfind(":")
    tag: str | None = None
    name = name_and_tag
    if colon > name_and_tag.rfind("/"):
        name, tag = name_and_tag[:colon], name_and_tag[colon + 1:]
        _check_tag(text, tag)
    registry, repository = _split_registry(name)
    _check_registry(text, registry)
    _check_repository(text, repository)
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return ImageRef(registry, repository, tag, digest)


def _split_registry(name: str) -> tuple[str, str]:
    """splitDockerDomain: decide whether the first element names a registry."""
    first, slash, rest = name.partition("/")
    if not slash:
        return DOCKER_HUB, OFFICIAL_PREFIX + name
    if first in DOCKER_HUB_ALIASES:
        registry, path = DOCKER_HUB, rest
    elif first == "localhost" or "." in first or ":" in first or first.lower() != first:
        registry, path = first, rest
    else:
        registry, path = DOCKER_HUB, name
    if registry == DOCKER_HUB and "/" not in path:
        path = OFFICIAL_PREFIX + path
    return registry, path


def _check_tag(text: str, tag: str) -> None:
    if not tag:
        raise BadReference(text, "empty tag after ':'")
    if len(tag) > TAG_MAX_CHARS:
        raise BadReference(text, f"tag is {len(tag)} characters, at most {TAG_MAX_CHARS} allowed")
    if not _TAG.fullmatch(tag):
        raise BadReference(
            text, f"invalid tag format {tag!r}: letters, digits, '_', '.' and '-',"
            " not starting with '.' or '-'")


def _check_registry(text: str, registry: str) -> None:
    reason = _registry_problem(registry)
    if reason is not None:
        raise BadReference(text, reason)


def _registry_problem(registry: str) -> str | None:
    host, port = _split_port(registry)
    if port is not None:
        if not _PORT.fullmatch(port) or not 0 < int(port) < 65536:
            return f"registry port {port!r} must be a number from 1 to 65535"
    literal = _IPV6_LITERAL.fullmatch(host)
    if literal:
        try:
            if "%" in literal.group(1):  # a zone id has no place in a URL host here
                raise ValueError("zone id")
            ipaddress.IPv6Address(literal.group(1))
        except ValueError:
            return f"registry {registry!r} has an invalid IPv6 address in brackets"
        return None
    if not _DOMAIN_NAME.fullmatch(host):
        return (f"invalid registry host {host!r}: DNS labels of letters, digits and '-',"
                " an IPv4 address, or an IPv6 address in brackets")
    return None


def _split_port(registry: str) -> tuple[str, str | None]:
    if registry.startswith("["):
        end = registry.find("]")
        if end != -1 and registry[end + 1:].startswith(":"):
            return registry[:end + 1], registry[end + 2:]
        return registry, None
    host, colon, port = registry.partition(":")
    return host, (port if colon else None)


def _check_repository(text: str, repository: str) -> None:
    if repository.lower() != repository:
        # Docker's wording: "repository name (...) must be lowercase".
        raise BadReference(text, f"repository name {repository!r} must be lowercase")
    if len(repository) > NAME_MAX_CHARS:
        raise BadReference(
            text, f"repository name must not be more than {NAME_MAX_CHARS} characters"
            f" (got {len(repository)})")
    for component in repository.split("/"):
        if not _COMPONENT.fullmatch(component):
            raise BadReference(
                text, f"invalid repository path component {component!r}: lowercase letters and"
                " digits, separated by '.', '_', '__' or dashes, not at either end")


def validate_registry(registry: str) -> str:
    """Check a registry host[:port] (e.g. a mirror) and return it; Hub aliases become docker.io."""
    if registry in DOCKER_HUB_ALIASES:
        return DOCKER_HUB
    reason = _registry_problem(registry) if isinstance(registry, str) and registry else (
        "a registry must be a non-empty host[:port] string")
    if reason is not None:
        raise BadReference(str(registry), reason)
    return registry


def validate_repository(repository: str) -> str:
    """Check a repository path (as used in a URL) against the grammar and return it."""
    if not isinstance(repository, str) or not repository:
        raise BadReference(repr(repository), "repository name must have at least one component")
    _check_repository(repository, repository)
    return repository


def validate_tag(tag: str) -> str:
    """Check a tag against the grammar and return it."""
    _check_tag(tag, tag)
    return tag


def api_host_for(registry: str) -> str:
    """The API host of a registry name: Docker Hub's is ``registry-1.docker.io``."""
    return DOCKER_HUB_API_HOST if registry in DOCKER_HUB_ALIASES else registry


def split_host_port(registry: str) -> tuple[str, int | None]:
    """``[::1]:5000`` -> (``::1``, 5000); ``example.com`` -> (``example.com``, None)."""
    host, port = _split_port(registry)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, (int(port) if port and port.isdigit() else None)


# What inet_aton accepts: one to four parts, each decimal, octal or 0x-hex.
_IPV4_SPELLING = re.compile(r"(?:0[xX][0-9A-Fa-f]*|[0-9]+)(?:\.(?:0[xX][0-9A-Fa-f]*|[0-9]+)){0,3}")
# 0.0.0.0/8 is "this network": Linux connects 0.x.y.z to the local host.
_THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")
# Metadata services outside link-local space: AWS's IPv6 endpoint (a ULA)
# and Alibaba Cloud's (shared address space).
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("fd00:ec2::254"),
                                ipaddress.ip_address("100.100.100.200")})


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (a bare host, no port)."""
    if host.lower() == "localhost":
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def host_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a resolver makes of an IP literal in any spelling, or None for a name.

    ``inet_aton`` (what getaddrinfo uses for IPv4 literals) also reads
    decimal (``2852039166``), hex (``0xa9fea9fe``), octal and short forms
    (``169.254.43518``, ``0``); all of them must reach the same verdict as
    the dotted quad. An IPv4-mapped or -compatible IPv6 address counts as
    the IPv4 address it carries.
    """
    bare = host.strip("[]")
    ip = _ip(bare)
    if ip is None and bare and _IPV4_SPELLING.fullmatch(bare):
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address):
        inner = ip.ipv4_mapped or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                                   if int(ip) >> 32 == 0 and int(ip) > 1 else None)
        return inner or ip
    return ip


def is_forbidden_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Link-local, unspecified ("this network", 0.0.0.0/8) or a known metadata address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return (ip.is_link_local or ip.is_unspecified or ip in METADATA_ADDRESSES
            or (isinstance(ip, ipaddress.IPv4Address) and ip in _THIS_NETWORK))


def is_link_local_host(host: str) -> bool:
    """True for link-local, unspecified or metadata IP literals, however spelled.

    Cloud metadata services live at link-local addresses (and a few others,
    ``METADATA_ADDRESSES``); nothing a registry says may send us there. A
    name is decided after resolution (``registry.addresses``).
    """
    ip = host_address(host)
    return ip is not None and is_forbidden_address(ip)
