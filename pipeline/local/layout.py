"""An OCI image layout (image-spec image-layout.md), in a directory or in a tar.

``oci-layout`` says the version, ``index.json`` lists what the layout holds,
``blobs/<algorithm>/<hex>`` holds the content. ``select_top`` picks the
descriptor an ``oci:``/``oci-archive:`` reference means: by digest, by tag
(the ``org.opencontainers.image.ref.name`` annotation, or for Docker 25+
``docker save`` output the ``io.containerd.image.name`` annotation), or the
only image when none is named. ``read_blob`` reads a small document by its
descriptor and checks it against digest and size.

What it refuses to trust: ``index.json`` and every blob. Documents are read
under the manifest size cap and parsed by ``oci.documents`` (duplicate keys,
media type confusion); blob names come from validated digests only; a tag
that matches two entries is refused as ambiguous, and a missing one lists
the tags that exist.
"""

from __future__ import annotations

import json

from pipeline.base.digest import Digest, VerifyingHasher
from pipeline.errors import BadImage, BadReference, LocalSourceError
from pipeline.local.files import SourceFiles
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import (
    MANIFEST_MAX_BYTES,
    Descriptor,
    ImageIndex,
    is_attestation,
    parse_manifest_document,
)
from pipeline.oci.reference import parse_reference

__all__ = ["LAYOUT_FILE", "INDEX_FILE", "REF_NAME", "IMAGE_NAME", "blob_name", "has_layout",
           "read_index", "select_top", "read_blob"]

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"
# What Docker 25+ (containerd image store) writes beside ref.name: the full name.
IMAGE_NAME = "io.containerd.image.name"
# {"imageLayoutVersion": "1.0.0"} is a few dozen bytes.
LAYOUT_FILE_MAX_BYTES = 4096


def blob_name(digest: Digest) -> str:
    """Where a blob lives in a layout (image-layout.md, "Blobs")."""
    return f"blobs/{digest.algorithm}/{digest.hex}"


def has_layout(files: SourceFiles, *, where: str) -> bool:
    """True when ``files`` holds an ``oci-layout`` of a version we read."""
    try:
        raw = files.read(LAYOUT_FILE, LAYOUT_FILE_MAX_BYTES, where=where)
    except LocalSourceError:
        return False
    try:
        version = json.loads(raw.decode("utf-8")).get("imageLayoutVersion")
    except (ValueError, AttributeError):
        raise LocalSourceError(f"{where}: {LAYOUT_FILE!r} is not a JSON object") from None
    if not isinstance(version, str) or not version.startswith("1."):
        raise LocalSourceError(f"{where}: imageLayoutVersion {version!r:.40} is not 1.x, the "
                               "version this pipeline reads")
    return True


def read_index(files: SourceFiles, *, where: str) -> ImageIndex:
    if not has_layout(files, where=where):
        raise LocalSourceError(f"{where}: no {LAYOUT_FILE!r} file; this is not an OCI image "
                               "layout")
    raw = files.read(INDEX_FILE, MANIFEST_MAX_BYTES, where=where)
    found = parse_manifest_document(raw, mt.OCI_INDEX, where=f"{where} {INDEX_FILE}")
    if not isinstance(found, ImageIndex):
        raise BadImage(f"{where}: {INDEX_FILE} is not an image index")
    return found


def _tag(desc: Descriptor, *, docker: bool) -> str | None:
    if not docker:
        return desc.annotation(REF_NAME)
    name = desc.annotation(IMAGE_NAME)
    if name is None:
        return None
    try:
        ref = parse_reference(name)
    except BadReference:
        return None
    return f"{ref.name}:{ref.tag}" if ref.tag else None


def select_top(index: ImageIndex, *, tag: str | None, digest: Digest | None, docker: bool,
               where: str) -> Descriptor | None:
    """The entry of ``index.json`` the reference means (a manifest or an index).

    None for a digest that ``index.json`` does not list: image-layout.md lets
    a reference name any blob, whose media type is then its own ``mediaType``.
    """
    entries = [d for d in index.manifests
               if d.media_type in mt.MANIFEST_TYPES and not is_attestation(d)]
    if digest is not None:
        for entry in entries:
            if entry.digest == digest:
                return entry
        return None
    tags = sorted({t for d in entries if (t := _tag(d, docker=docker)) is not None})
    if tag is None:
        if len(entries) == 1:
            return entries[0]
        raise LocalSourceError(
            f"{where} holds {len(entries)} images; name one with :<tag> (tags: "
            f"{', '.join(repr(t) for t in tags) or 'none'})")
    matching = [d for d in entries if _tag(d, docker=docker) == tag]
    if len(matching) > 1:
        raise LocalSourceError(f"{where}: the tag {tag!r} names {len(matching)} different "
                               "images; refusing an ambiguous layout")
    if not matching:
        raise LocalSourceError(f"{where} has no image tagged {tag!r} (tags: "
                               f"{', '.join(repr(t) for t in tags) or 'none'})")
    return matching[0]


def read_blob(files: SourceFiles, digest: Digest, size: int | None, limit: int, *,
              where: str) -> bytes:
    """A small blob (manifest, index, config), verified against its digest (and size)."""
    raw = files.read(blob_name(digest), limit, where=where)
    hasher = VerifyingHasher(digest, size=size, what=f"{where}: blob {digest}")
    hasher.update(raw)
    hasher.verify()
    return raw
