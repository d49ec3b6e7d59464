"""Push test images with the registry's own upload API (distribution spec, "Push").

Blobs go up as ``POST /v2/<name>/blobs/uploads/`` then ``PUT <location>?digest=``
with the whole body (or ``PATCH`` chunks first when ``chunk_size`` is given);
manifests as ``PUT /v2/<name>/manifests/<ref>`` with their media type as
Content-Type. Every answer is checked, so a failed push fails the test set-up
loudly instead of leaving a half-populated repository.
"""

from __future__ import annotations

from typing import Protocol, Union

import httpx

from .images import Blob, Image, Index
from .layers import Layer

__all__ = ["push", "push_blob", "push_manifest", "DEFAULT"]


class _Target(Protocol):
    url: str

    @property
    def auth(self) -> httpx.Auth | None: ...


class _Default:
    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()
"""Use the target registry's own push credentials (``registry.auth``)."""

AuthArg = Union[httpx.Auth, None, _Default]


def _client(target: _Target | str, auth: AuthArg) -> httpx.Client:
    url = target if isinstance(target, str) else target.url
    if isinstance(auth, _Default):
        auth = None if isinstance(target, str) else target.auth
    return httpx.Client(base_url=url, auth=auth, timeout=60.0)


def _check(r: httpx.Response, want: int, what: str) -> None:
    if r.status_code != want:
        raise RuntimeError(f"harness push: {what}: {r.request.method} {r.request.url} answered "
                           f"{r.status_code}, expected {want}: {r.text[:500]}")


def _push_blob(c: httpx.Client, repository: str, blob: Blob | Layer,
               chunk_size: int | None) -> None:
    head = c.head(f"/v2/{repository}/blobs/{blob.digest}")
    if head.status_code == 200:
        return
    r = c.post(f"/v2/{repository}/blobs/uploads/")
    _check(r, 202, f"start upload of {blob.digest}")
    location = httpx.URL(str(c.base_url)).join(r.headers["location"])
    data = blob.data
    if chunk_size:
        for start in range(0, len(data), chunk_size):
            piece = data[start:start + chunk_size]
            r = c.patch(location, content=piece, headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(piece) - 1}"})
            _check(r, 202, f"upload chunk of {blob.digest}")
            location = httpx.URL(str(c.base_url)).join(r.headers["location"])
        data = b""
    r = c.put(location.copy_merge_params({"digest": blob.digest}), content=data,
              headers={"Content-Type": "application/octet-stream"})
    _check(r, 201, f"finish upload of {blob.digest}")


def push_blob(target: _Target | str, repository: str, blob: Blob | Layer, *,
              auth: AuthArg = DEFAULT, chunk_size: int | None = None) -> str:
    """Upload one blob (skipped if the registry has it); returns its digest."""
    with _client(target, auth) as c:
        _push_blob(c, repository, blob, chunk_size)
    return blob.digest


def push_manifest(target: _Target | str, repository: str, reference: str, data: bytes,
                  media_type: str, *, auth: AuthArg = DEFAULT) -> str:
    """PUT raw manifest bytes under a tag or digest; returns the registry's digest."""
    with _client(target, auth) as c:
        return _push_manifest(c, repository, reference, data, media_type)


def _push_manifest(c: httpx.Client, repository: str, reference: str, data: bytes,
                   media_type: str) -> str:
    r = c.put(f"/v2/{repository}/manifests/{reference}", content=data,
              headers={"Content-Type": media_type})
    _check(r, 201, f"put manifest {reference}")
    return r.headers["docker-content-digest"]


def _push_image(c: httpx.Client, repository: str, image: Image, reference: str,
                chunk_size: int | None) -> str:
    for blob in image.blobs:
        _push_blob(c, repository, blob, chunk_size)
    return _push_manifest(c, repository, reference, image.manifest, image.media_type)


def push(target: _Target | str, repository: str, tag: str | None,
         obj: Image | Index | Layer | Blob, *, auth: AuthArg = DEFAULT,
         chunk_size: int | None = None) -> str:
    """Push an image or index (all blobs and child manifests first) and tag it.

    ``target`` is a :class:`~tests.harness.registry.Registry` (its push
    credentials are used unless ``auth`` is given) or a base URL. With
    ``tag=None`` the top manifest is stored by digest only. A bare Layer or
    Blob is uploaded as a blob. Returns the digest of what was pushed.
    """
    with _client(target, auth) as c:
        if isinstance(obj, (Layer, Blob)):
            _push_blob(c, repository, obj, chunk_size)
            return obj.digest
        if isinstance(obj, Index):
            for child in (*obj.images, *obj.attestations):
                _push_image(c, repository, child, child.digest, chunk_size)
        else:
            for blob in obj.blobs:
                _push_blob(c, repository, blob, chunk_size)
        got = _push_manifest(c, repository, tag or obj.digest, obj.manifest, obj.media_type)
    if got != obj.digest:
        raise RuntimeError(f"harness push: registry stored {repository} as {got}, "
                           f"expected {obj.digest}")
    return got
