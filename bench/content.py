"""Deterministic file contents with realistic compressibility, produced in bounded memory.

Three kinds, mixed the way a distribution image mixes them:

- ``text``: Zipf-distributed pseudo-words and punctuation (documentation,
  scripts, configs); gzip -6 shrinks it about 3:1.
- ``binary``: 4 KiB pages alternating between random bytes and sparse
  structure (executables, shared objects); about 2:1.
- ``packed``: random bytes (already compressed archives, images, jars); 1:1.

Every method is a pure function of the seed and the call order, so the same
world parameters give the same blobs (and digests) on every run. ``stream``
yields a large file in 1 MiB pieces so a 256 MiB file never sits in memory.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

__all__ = ["Content", "KINDS", "STREAM_CHUNK"]

KINDS = ("text", "binary", "packed")
# Big files are generated and written in pieces of this size.
STREAM_CHUNK = 1 << 20
_PAGE = 4096
# A 1 MiB corpus is larger than gzip's 32 KiB window, so slices of it compress
# like fresh prose rather than like repeats of one paragraph.
_CORPUS_BYTES = 1 << 20
_SYLLABLES = ("ka to ri en an de li mo su ter ion ex pro con ing al er st re ed un ve is "
              "or ar th ch").split()
# Zipf-weighted pseudo-words: a vocabulary as large as real prose or code has,
# so gzip finds matches about as often as it does in /usr/share/doc.
_VOCABULARY = 6000
_PUNCT = (b" ",) * 12 + (b", ", b". ", b"\n", b"(", b") ", b" = ", b"_", b"::", b"\n    ",
                         b"; ")


class Content:
    """A seeded generator of file contents; one instance per layer being built."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        rng = self.rng
        vocabulary = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))).encode()
                      for _ in range(_VOCABULARY)]
        weights = [1.0 / rank for rank in range(1, _VOCABULARY + 1)]
        # Average piece is about 6 bytes; draw enough to fill the corpus.
        count = _CORPUS_BYTES // 4
        words = rng.choices(vocabulary, weights=weights, k=count)
        marks = rng.choices(_PUNCT, k=count)
        self.corpus = b"".join(w + p for w, p in zip(words, marks, strict=True))[:_CORPUS_BYTES]

    def text(self, n: int) -> bytes:
        start = self.rng.randrange(len(self.corpus))
        out = self.corpus[start:start + n]
        while len(out) < n:
            out += self.corpus[:n - len(out)]
        return out

    def binary(self, n: int) -> bytes:
        # Pages of noise between pages that are mostly zeros with a little
        # structure (tables, padding): roughly how ELF files compress.
        noise = self.rng.randbytes((n + 1) // 2)
        pages: list[bytes] = []
        half = _PAGE // 2
        for off in range(0, len(noise), half):
            pages.append(noise[off:off + half])
            pages.append(bytes(half - 16) + noise[off:off + 16])
        return (b"\x7fELF" + b"".join(pages))[:n]

    def packed(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def make(self, kind: str, n: int) -> bytes:
        if kind == "text":
            return self.text(n)
        if kind == "binary":
            return self.binary(n)
        if kind == "packed":
            return self.packed(n)
        raise ValueError(f"internal error: unknown content kind {kind!r}")

    def stream(self, kind: str, n: int) -> Iterator[bytes]:
        """``n`` bytes of ``kind`` in STREAM_CHUNK pieces."""
        left = n
        while left > 0:
            piece = min(left, STREAM_CHUNK)
            yield self.make(kind, piece)
            left -= piece

    def size(self, mean: int) -> int:
        """A heavy-tailed file size: most files small, a few large (mean ``mean``)."""
        return int(self.rng.expovariate(1.0 / max(1, mean)))
