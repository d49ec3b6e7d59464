"""Content digests (OCI image-spec descriptor.md, "Digests").

A digest is validated here before it is used anywhere else: in a URL, in a
cache path, in a task name. Only the registered algorithms sha256 and sha512
are accepted, with lowercase hex of exactly the right length, so a digest
string can never smuggle ``/``, ``..`` or query syntax into a path or URL.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import BadDigest, DigestMismatch

__all__ = ["Digest", "Hasher", "parse_digest", "digest_of", "VerifyingHasher"]

# Encoded length in hex characters per registered algorithm (descriptor.md).
HEX_LENGTHS: dict[str, int] = {"sha256": 64, "sha512": 128}
_HEX = frozenset("0123456789abcdef")


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    """A validated ``algorithm:hex`` content digest."""

    algorithm: str
    hex: str

    def __post_init__(self) -> None:
        want = HEX_LENGTHS.get(self.algorithm)
        if want is None:
            raise BadDigest(
                f"{self.algorithm}:{self.hex}",
                f"unsupported algorithm {self.algorithm!r} (supported: sha256, sha512)",
            )
        if len(self.hex) != want or not _HEX.issuperset(self.hex):
            raise BadDigest(
                f"{self.algorithm}:{self.hex}",
                f"expected {want} lowercase hex characters after '{self.algorithm}:'",
            )

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @property
    def short(self) -> str:
        """The first 12 hex characters, for log lines and task titles."""
        return self.hex[:12]

    def hasher(self) -> Hasher:
        return hashlib.new(self.algorithm)


def parse_digest(value: str) -> Digest:
    """Parse and validate ``sha256:<64 hex>`` or ``sha512:<128 hex>``."""
    if not isinstance(value, str):
        raise BadDigest(repr(value), "a digest must be a string")
    algorithm, sep, encoded = value.partition(":")
    if not sep:
        raise BadDigest(value, "expected 'algorithm:hex', e.g. 'sha256:<64 hex characters>'")
    return Digest(algorithm, encoded)


def digest_of(data: bytes, algorithm: str = "sha256") -> Digest:
    """The digest of an in-memory byte string."""
    return Digest(algorithm, hashlib.new(algorithm, data).hexdigest())


class VerifyingHasher:
    """Hashes and counts bytes as they pass, then checks them against a descriptor.

    Used by every reader that must not trust what it reads: blobs against
    their digest and size, uncompressed layers against their diff_id.
    """

    __slots__ = ("expected", "size", "what", "_hash", "count")

    def __init__(self, expected: Digest, *, size: int | None = None, what: str) -> None:
        self.expected = expected
        self.size = size
        self.what = what
        self._hash = expected.hasher()
        self.count = 0

    def update(self, data: bytes) -> None:
        self.count += len(data)
        if self.size is not None and self.count > self.size:
            raise DigestMismatch(f"{self.what} size", f"{self.size} bytes",
                                 f"more than {self.size} bytes")
        self._hash.update(data)

    def verify(self) -> None:
        """Raise DigestMismatch unless the bytes seen match size and digest."""
        if self.size is not None and self.count != self.size:
            raise DigestMismatch(f"{self.what} size", f"{self.size} bytes", f"{self.count} bytes")
        got = Digest(self.expected.algorithm, self._hash.hexdigest())
        if got != self.expected:
            raise DigestMismatch(self.what, str(self.expected), str(got))
