"""Pushing to a registry: blob HEAD, cross-repository mount, upload, manifest PUT.

The distribution spec's push side, as the remote cache and publish need it:

- ``blob_exists``: HEAD a blob; a registry that has it is not sent it again.
- ``mount_blob``: POST ``?mount=<digest>&from=<repo>``; 201 means the blob is
  now in this repository without a byte uploaded. A registry that cannot
  mount answers 202 with an upload session, which is then used.
- ``upload_blob``: monolithic POST then PUT ``?digest=``, the body streamed
  from a caller's chunk iterator (never a whole blob in memory). Retried as a
  whole with a fresh iterator: an upload session is not resumable across
  registries in practice.
- ``put_manifest``: PUT the manifest bytes last (the atomic publish), and the
  registry's ``Docker-Content-Digest`` is checked against our own hash.

What it refuses to trust: the ``Location`` of an upload session must stay on
the registry's own scheme and host (the credentials go with the PUT), and is
read under a length cap.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from urllib.parse import urlencode

import httpx

from pipeline.base.digest import Digest
from pipeline.errors import DigestMismatch, RegistryError
from pipeline.oci.reference import api_host_for, validate_registry, validate_repository
from pipeline.registry.client import RegistryClient

__all__ = ["blob_exists", "mount_blob", "upload_blob", "put_manifest", "ensure_blob"]

# An upload URL is a path and an opaque state token; longer is a broken registry.
LOCATION_MAX_CHARS = 8192


def _uploads_url(client: RegistryClient, registry: str, repository: str) -> str:
    registry = validate_registry(registry)
    validate_repository(repository)
    return f"{client.scheme(registry)}://{api_host_for(registry)}/v2/{repository}/blobs/uploads/"


def _location(response: httpx.Response, base: str) -> str:
    raw = response.headers.get("location", "")
    if not raw or len(raw) > LOCATION_MAX_CHARS:
        raise RegistryError(f"upload session answer has {'no' if not raw else 'an overlong'}"
                            f" Location header; the registry is not OCI-conformant",
                            method="POST", url=base)
    target = httpx.URL(base).join(raw)
    origin = httpx.URL(base)
    if (target.scheme, target.netloc) != (origin.scheme, origin.netloc):
        raise RegistryError(f"upload Location {raw[:200]!r} leaves the registry "
                            f"{origin.netloc.decode('ascii')!r}; refusing to send credentials"
                            " and data there", method="POST", url=base)
    return str(target)


def blob_exists(client: RegistryClient, registry: str, repository: str,
                digest: Digest) -> bool:
    """HEAD the blob: True when the repository has it."""
    url = client.url(registry, repository, "blobs", digest)

    def once() -> bool:
        with client.send("HEAD", url, {}, ok=(200, 404)) as response:
            return response.status_code == 200

    return client.retry.run(once)


def mount_blob(client: RegistryClient, registry: str, repository: str, digest: Digest,
               source: str) -> bool:
    """Ask for a cross-repository mount from ``source``; True when mounted (201)."""
    validate_repository(source)
    base = _uploads_url(client, registry, repository)
    url = base + "?" + urlencode({"mount": str(digest), "from": source})

    def once() -> bool:
        with client.send("POST", url, {"Content-Length": "0"}, content=b"",
                         ok=(201, 202)) as response:
            return response.status_code == 201

    return client.retry.run(once)


def upload_blob(client: RegistryClient, registry: str, repository: str, digest: Digest,
                size: int, chunks: Callable[[], Iterable[bytes]]) -> None:
    """Monolithic upload: POST a session, PUT the whole body streamed from ``chunks()``."""
    base = _uploads_url(client, registry, repository)

    def once() -> None:
        with client.send("POST", base, {"Content-Length": "0"}, content=b"",
                         ok=(202,)) as response:
            location = _location(response, base)
        separator = "&" if httpx.URL(location).query else "?"
        put_url = location + separator + urlencode({"digest": str(digest)})
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        with client.send("PUT", put_url, headers, content=chunks(), ok=(201,)):
            pass

    client.retry.run(once)


def ensure_blob(client: RegistryClient, registry: str, repository: str, digest: Digest,
                size: int, chunks: Callable[[], Iterable[bytes]], *,
                mount_from: str | None = None) -> str:
    """Make the blob present, cheapest first: ``present``, ``mounted`` or ``uploaded``."""
    if blob_exists(client, registry, repository, digest):
        return "present"
    if mount_from and mount_from != repository and mount_blob(
            client, registry, repository, digest, mount_from):
        return "mounted"
    upload_blob(client, registry, repository, digest, size, chunks)
    return "uploaded"


def put_manifest(client: RegistryClient, registry: str, repository: str, reference: str,
                 media_type: str, body: bytes) -> Digest:
    """PUT a manifest by tag or digest; its digest, checked against the registry's."""
    url = client.url(registry, repository, "manifests", reference)
    digest = Digest("sha256", hashlib.sha256(body).hexdigest())

    def once() -> Digest:
        with client.send("PUT", url, {"Content-Type": media_type}, content=body,
                         ok=(201,)) as response:
            claimed = response.headers.get("docker-content-digest")
        if claimed and claimed != str(digest):
            raise DigestMismatch(f"PUT {url}: manifest vs. Docker-Content-Digest",
                                 str(digest), claimed[:200])
        return digest

    return client.retry.run(once)
