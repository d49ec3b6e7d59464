"""Local image references: an OCI layout or an image archive on disk (no I/O).

Spelled like the containers/image transports (skopeo, podman)::

    oci:<dir>[:<tag>]              an OCI image layout directory
    oci:<dir>@sha256:<hex>         ... one manifest or index in it, by digest
    oci-archive:<file.tar>[:<tag>] the same layout inside a tar
    docker-archive:<file.tar>[:<name:tag>]
                                   ``docker save`` output (classic, or the
                                   OCI layout inside it that Docker 25+ writes)

As in containers/image the path ends at the first ``:`` (a path cannot hold
one); what follows is the tag (``org.opencontainers.image.ref.name``), or for
a docker-archive a Docker reference matched against ``RepoTags``. A relative
path is relative to the manifest file; that is decided where the manifest
is known (``LocalRef.location``), never here.

What it refuses to trust: the whole text. The path must be non-empty and
free of NUL and control characters (it is printed in messages and becomes a
file name); the tag follows the OCI ref-name grammar; a Docker reference
goes through ``parse_reference`` and must carry a tag.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.base.digest import Digest, parse_digest
from pipeline.errors import BadDigest, BadReference
from pipeline.oci.reference import ImageRef, parse_reference

__all__ = ["LOCAL_KINDS", "LocalRef", "is_local_reference", "parse_local_reference"]

OCI, OCI_ARCHIVE, DOCKER_ARCHIVE = "oci", "oci-archive", "docker-archive"
LOCAL_KINDS = (OCI, OCI_ARCHIVE, DOCKER_ARCHIVE)
# A path longer than PATH_MAX is not one any system call accepts.
PATH_MAX_CHARS = 4096
# image-spec annotations.md: org.opencontainers.image.ref.name is a
# "ref" of components of [A-Za-z0-9] joined by [-._:@/+] (or "--").
_REF_NAME = re.compile(r"[A-Za-z0-9]+(?:(?:[-._:@/+]|--)[A-Za-z0-9]+)*")
REF_NAME_MAX_CHARS = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class LocalRef:
    """``<kind>:<path>[:<tag>|@<digest>]``: where a local image is and which one in it."""

    kind: str
    """``oci``, ``oci-archive`` or ``docker-archive``."""
    path: str
    """As written; relative paths are relative to the manifest's directory."""
    tag: str | None = None
    """An OCI ref name, or for a docker-archive a normalised Docker reference."""
    digest: Digest | None = None

    @property
    def is_archive(self) -> bool:
        return self.kind != OCI

    def location(self, base: Path) -> Path:
        """The absolute path of the layout or archive, ``base`` being the manifest's directory."""
        return Path(os.path.normpath(base / Path(self.path).expanduser()))

    def __str__(self) -> str:
        text = f"{self.kind}:{self.path}"
        if self.digest is not None:
            return f"{text}@{self.digest}"
        return f"{text}:{self.tag}" if self.tag is not None else text


def is_local_reference(text: str) -> bool:
    """True when ``text`` names a local transport (``oci:``, ``oci-archive:``, ...)."""
    kind, colon, _ = text.partition(":")
    return bool(colon) and kind in LOCAL_KINDS


def parse_local_reference(text: str) -> LocalRef:
    """Parse ``<kind>:<path>[:<tag>]`` (or ``@<digest>`` for ``oci:``); raise BadReference."""
    kind, colon, rest = text.partition(":")
    if not colon or kind not in LOCAL_KINDS:
        raise BadReference(text, f"a local reference starts with one of "
                                 f"{', '.join(k + ':' for k in LOCAL_KINDS)}")
    digest: Digest | None = None
    tag: str | None = None
    if kind == OCI and "@" in rest:
        path, _, digest_text = rest.partition("@")
        try:
            digest = parse_digest(digest_text)
        except BadDigest as err:
            raise BadReference(text, f"bad digest after '@': {err.reason}") from None
    else:
        path, colon, selector = rest.partition(":")
        if colon:
            tag = _selector(text, kind, selector)
    _check_path(text, kind, path)
    return LocalRef(kind, path, tag, digest)


def _selector(text: str, kind: str, selector: str) -> str:
    if not selector:
        raise BadReference(text, "empty tag after the path's ':'")
    if kind == DOCKER_ARCHIVE:
        ref: ImageRef = parse_reference(selector)
        if ref.digest is not None:
            raise BadReference(text, "a docker-archive is selected by NAME:TAG as in its "
                                     "RepoTags, not by digest")
        return f"{ref.name}:{ref.tag}"
    if len(selector) > REF_NAME_MAX_CHARS or not _REF_NAME.fullmatch(selector):
        raise BadReference(text, f"tag {selector!r} is not an OCI ref name: letters and "
                                 "digits joined by one of - . _ : @ / +")
    return selector


def _check_path(text: str, kind: str, path: str) -> None:
    if not path:
        raise BadReference(text, f"missing path after '{kind}:'; write {kind}:<path>")
    if len(path) > PATH_MAX_CHARS:
        raise BadReference(text, f"path is {len(path)} characters, at most {PATH_MAX_CHARS}")
    if _CONTROL.search(path):
        raise BadReference(text, "the path holds a control character")
