"""Local image sources: resolve, probe and read blobs of a layout or an archive.

The facade the tasks use (``oci:``, ``oci-archive:``, ``docker-archive:``):

- ``resolve_local``: the lock entry (``ResolvedImage``), pinned by the same
  rules as a registry image (``oci.pin``); manifests and config verified
  against their digests, every layer checked to be present at its size;
- ``probe_local``: the source's ``identity`` without reading any layer: the
  digest of the chosen manifest or index for a layout, of the config, layer
  names and sizes for a classic docker-archive. A lock entry whose identity
  still matches needs no resolving, and nothing of the image is read again;
- ``open_blob``: a reader of one blob, for the blob cache to copy and verify.

A docker-archive written by Docker 25+ also holds an OCI layout; it is read
as one (its real manifests), selected by ``io.containerd.image.name``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.base.digest import Digest
from pipeline.errors import BadImage, LocalSourceError
from pipeline.local import dockerarchive as da
from pipeline.local import layout
from pipeline.local.archive import ArchiveFiles
from pipeline.local.files import DirectoryFiles, Readable, SourceFiles
from pipeline.oci.documents import (
    CONFIG_MAX_BYTES,
    MANIFEST_MAX_BYTES,
    ImageIndex,
    ImageManifest,
    parse_image_config,
    parse_manifest_document,
    select_manifest,
)
from pipeline.oci.localref import DOCKER_ARCHIVE, OCI, LocalRef
from pipeline.oci.pin import check_config_size, pin_image
from pipeline.oci.platform import Platform
from pipeline.oci.resolved import ResolvedImage

__all__ = ["open_source", "resolve_local", "probe_local", "open_blob"]


def open_source(ref: LocalRef, base: Path) -> SourceFiles:
    """The files of the layout or archive ``ref`` names (``base``: the manifest's directory)."""
    location = ref.location(base)
    if ref.kind == OCI:
        return DirectoryFiles(location)
    return ArchiveFiles.scan(location)


def _is_layout(ref: LocalRef, files: SourceFiles, where: str) -> bool:
    return ref.kind != DOCKER_ARCHIVE or layout.has_layout(files, where=where)


def _top(ref: LocalRef, files: SourceFiles, where: str) -> tuple[Digest, str, int | None]:
    """(digest, media type, size) of the manifest or index ``ref`` names in a layout."""
    index = layout.read_index(files, where=where)
    found = layout.select_top(index, tag=ref.tag, digest=ref.digest,
                              docker=ref.kind == DOCKER_ARCHIVE, where=where)
    if found is None:
        if ref.digest is None:
            raise AssertionError("internal error: select_top found nothing for a tag")
        return ref.digest, "", None
    return found.digest, found.media_type, found.size


def probe_local(ref: LocalRef, base: Path) -> Digest:
    """The identity of what ``ref`` names now (cheap: no layer is read)."""
    where = str(ref)
    if ref.kind == OCI and ref.digest is not None:
        return ref.digest  # a digest cannot move
    files = open_source(ref, base)
    if _is_layout(ref, files, where):
        return _top(ref, files, where)[0]
    entry = da.select_entry(files, ref.tag, where=where)
    config, _ = da.read_config(files, entry, where=where)
    return da.identity_of(config, entry, [files.size(n, where=where) for n in entry.layers])


def resolve_local(ref: LocalRef, base: Path, platform: Platform) -> ResolvedImage:
    """Resolve ``ref`` for ``platform``: the lock entry, every document verified."""
    where = str(ref)
    files = open_source(ref, base)
    if _is_layout(ref, files, where):
        return _resolve_layout(ref, files, platform, where)
    return _resolve_classic(ref, files, platform, where)


def _resolve_layout(ref: LocalRef, files: SourceFiles, platform: Platform,
                    where: str) -> ResolvedImage:
    digest, media_type, size = _top(ref, files, where)
    body = layout.read_blob(files, digest, size, MANIFEST_MAX_BYTES, where=where)
    document = parse_manifest_document(body, media_type, where=where)
    index_digest: Digest | None = None
    chosen: Platform | None = None
    if isinstance(document, ImageIndex):
        entry = select_manifest(document, platform, where=where)
        child = layout.read_blob(files, entry.digest, entry.size, MANIFEST_MAX_BYTES,
                                 where=where)
        manifest = parse_manifest_document(child, entry.media_type,
                                           where=f"{where} for {entry.platform}")
        if not isinstance(manifest, ImageManifest):
            raise BadImage(f"{where}: the index entry {entry.digest} is itself an index; "
                           "nested indexes are not supported")
        index_digest, manifest_digest, chosen = digest, entry.digest, entry.platform
    else:
        manifest, manifest_digest = document, digest
    check_config_size(manifest.config, where=where)
    raw = layout.read_blob(files, manifest.config.digest, manifest.config.size,
                           CONFIG_MAX_BYTES, where=where)
    config = parse_image_config(raw, where=f"{where} config {manifest.config.digest}")
    resolved = pin_image(ref, "", "", platform, chosen=chosen, index_digest=index_digest,
                         manifest_digest=manifest_digest, manifest=manifest, config=config,
                         where=where)
    for layer in resolved.layers:  # a missing layer fails now, not in the middle of a build
        found = files.size(layout.blob_name(layer.digest), where=f"{where} layer {layer.digest}")
        if found != layer.size:
            raise BadImage(f"{where}: layer {layer.digest} is {found} bytes in the layout, "
                           f"the manifest says {layer.size}")
    return dataclasses.replace(resolved, identity=digest)


def _resolve_classic(ref: LocalRef, files: SourceFiles, platform: Platform,
                     where: str) -> ResolvedImage:
    entry = da.select_entry(files, ref.tag, where=where)
    config_desc, raw = da.read_config(files, entry, where=where)
    config = parse_image_config(raw, where=f"{where} config {entry.config!r}")
    if len(entry.layers) != len(config.diff_ids):
        raise BadImage(f"{where}: {da.MANIFEST_FILE} lists {len(entry.layers)} layers but the "
                       f"config lists {len(config.diff_ids)} diff_ids; the archive is corrupt")
    layers = [da.layer_descriptor(files, name, diff_id, where=where)
              for name, diff_id in zip(entry.layers, config.diff_ids, strict=True)]
    manifest, manifest_digest = da.synthesize(config_desc, layers)
    resolved = pin_image(ref, "", "", platform, chosen=None, index_digest=None,
                         manifest_digest=manifest_digest, manifest=manifest, config=config,
                         where=where)
    identity = da.identity_of(config_desc, entry, [d.size for d in layers])
    return dataclasses.replace(resolved, identity=identity)


@contextmanager
def open_blob(ref: LocalRef, base: Path, digest: Digest, size: int) -> Iterator[Readable]:
    """A reader of blob ``digest`` (``size`` bytes) of the source; the caller verifies it."""
    where = f"{ref} blob {digest}"
    files = open_source(ref, base)
    if _is_layout(ref, files, where):
        name = layout.blob_name(digest)
    else:
        name = _classic_name(ref, files, digest, size, where)
    with files.open(name, where=where) as reader:
        yield reader


def _classic_name(ref: LocalRef, files: SourceFiles, digest: Digest, size: int,
                  where: str) -> str:
    """Which file of a classic archive is ``digest``: a name that says so, else by hashing."""
    entry = da.select_entry(files, ref.tag, where=where)
    names = [n for n in (entry.config, *entry.layers) if files.size(n, where=where) == size]
    names.sort(key=lambda n: digest.hex not in n)  # skopeo names files <hex>.tar
    for name in names:
        hasher = digest.hasher()
        with files.open(name, where=where) as f:
            while chunk := f.read(1 << 20):
                hasher.update(chunk)
        if hasher.hexdigest() == digest.hex:
            return name
    raise LocalSourceError(f"{where}: no file of the archive has this digest any more; the "
                           "archive changed since it was resolved: run `doit` (or `doit "
                           "update`) to resolve it again")
