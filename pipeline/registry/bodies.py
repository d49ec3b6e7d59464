"""Reading response bodies from a registry: decoded under a cap, against a clock.

What it refuses to trust:

- ``Content-Encoding``. A registry may compress a response we asked to get
  as ``identity``. httpx would inflate each network chunk whole (64 KiB of
  gzip can be 64 MiB), so bodies are read raw and inflated here with a
  bounded output per step: every cap applies to the decoded bytes, while
  decoding. gzip and deflate are decoded; any other coding is refused
  (we never offer it). Blobs are never decoded: their digest covers the
  bytes as sent, so an encoded blob is verified as sent (``BlobStream``).
- The pace. httpx's read timeout is per chunk: a body sent one byte every
  few seconds would never time out. Small bodies (manifests, token answers,
  error bodies) must be complete within ``Deadlines.body_s``; a blob must
  move at least ``Deadlines.blob_min_bytes_per_s`` over every
  ``Deadlines.blob_window_s``. Both fail as temporary errors, so the usual
  retries apply first.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from pipeline.base.units import KiB
from pipeline.errors import RegistryError

__all__ = ["Deadlines", "DEFAULT_DEADLINES", "RateFloor", "decoded_chunks", "read_capped",
           "DECODE_STEP_BYTES"]

# Inflating one step never yields more than this; the cap check runs in between.
DECODE_STEP_BYTES = 64 * KiB


@dataclass(frozen=True, slots=True)
class Deadlines:
    """How slow a registry may be before a request counts as failed."""

    body_s: float = 30.0
    """A manifest, token answer or error body: a few KB that arrive in well under a
    second from any working registry; 30 s allows a congested link."""
    blob_min_bytes_per_s: float = 10 * KiB
    """A blob slower than this over a whole window is stuck, not slow (dial-up is 5 KB/s)."""
    blob_window_s: float = 60.0
    """The window the blob rate is measured over: long enough to ride out a CDN hiccup."""
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)


DEFAULT_DEADLINES = Deadlines()


class RateFloor:
    """Counts a blob's bytes and fails when a whole window moved too few of them."""

    def __init__(self, deadlines: Deadlines, *, method: str, url: str, host: str) -> None:
        self._d = deadlines
        self._method, self._url, self._host = method, url, host
        self._start = deadlines.clock()
        self._bytes = 0

    def add(self, nbytes: int) -> None:
        self._bytes += nbytes
        elapsed = self._d.clock() - self._start
        if elapsed < self._d.blob_window_s:
            return
        rate = self._bytes / elapsed
        if rate < self._d.blob_min_bytes_per_s:
            raise RegistryError(
                f"{self._host} sent the blob at {rate:.0f} bytes/s over {elapsed:.0f} s, below"
                f" the {self._d.blob_min_bytes_per_s:.0f} bytes/s floor; the registry or the"
                " network is stuck, try again later", method=self._method, url=self._url,
                temporary=True)
        self._start, self._bytes = self._d.clock(), 0


class _Inflater:
    """One bounded inflate step at a time: ``step(data, max_out)``."""

    def __init__(self, coding: str) -> None:
        # gzip has its wrapper; "deflate" is meant to be zlib-wrapped, but some
        # servers send raw deflate under that name: try zlib, fall back to raw.
        self._gzip = coding != "deflate"
        self._obj = zlib.decompressobj(16 + zlib.MAX_WBITS if self._gzip else zlib.MAX_WBITS)
        self._started = False

    def step(self, data: bytes, max_out: int) -> bytes:
        """Inflate ``data`` (or, given b"", what is left of earlier data) up to ``max_out``."""
        if not data:
            return self._obj.decompress(self._obj.unconsumed_tail, max_out)
        if not self._started and not self._gzip:
            self._started = True
            try:
                return self._obj.decompress(data, max_out)
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        self._started = True
        return self._obj.decompress(data, max_out)


def _inflater(coding: str, method: str, url: str) -> _Inflater | None:
    """The decoder for ``coding``, None for identity; a RegistryError for anything else."""
    codings = [c.strip().lower() for c in coding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in ("gzip", "x-gzip", "deflate"):
        shown = coding.encode("ascii", "backslashreplace").decode("ascii")[:60]
        raise RegistryError(f"the response has Content-Encoding {shown!r}, which we did not"
                            " ask for and do not decode (only gzip and deflate)",
                            method=method, url=url)
    return _Inflater(codings[0])


def decoded_chunks(raw: Iterable[bytes], coding: str, *, method: str,
                   url: str) -> Iterator[bytes]:
    """The body behind ``Content-Encoding: coding``, at most ``DECODE_STEP_BYTES`` a piece."""
    inflater = _inflater(coding, method, url)
    if inflater is None:
        yield from raw
        return
    try:
        for chunk in raw:
            out = inflater.step(chunk, DECODE_STEP_BYTES)
            while out:
                yield out
                out = inflater.step(b"", DECODE_STEP_BYTES)
    except zlib.error as err:
        raise RegistryError(f"the response's Content-Encoding {coding!r} does not decode"
                            f" ({err})", method=method, url=url) from None


def read_capped(raw: Iterable[bytes], coding: str, limit: int, *, method: str, url: str,
                what: str, host: str, deadlines: Deadlines = DEFAULT_DEADLINES,
                truncate: bool = False) -> bytes:
    """The decoded body, at most ``limit`` bytes, complete within ``deadlines.body_s``.

    Past the limit: the first ``limit`` bytes when ``truncate`` (error bodies),
    else a RegistryError. Too slow: a temporary RegistryError naming the host.
    """
    give_up = deadlines.clock() + deadlines.body_s
    arrived = 0

    def timed() -> Iterator[bytes]:
        nonlocal arrived
        for piece in raw:
            arrived += len(piece)
            if deadlines.clock() > give_up:
                raise RegistryError(
                    f"{host} took more than {deadlines.body_s:.0f} s to send the {what}"
                    f" ({arrived} bytes arrived); the registry is too slow or stuck, try"
                    " again later", method=method, url=url, temporary=True)
            yield piece

    chunks: list[bytes] = []
    total = 0
    for chunk in decoded_chunks(timed(), coding, method=method, url=url):
        total += len(chunk)
        if total > limit:
            if truncate:
                chunks.append(chunk[: limit - (total - len(chunk))])
                break
            raise RegistryError(f"{what} is larger than the {limit} byte limit"
                                " (counted after decoding)", method=method, url=url)
        chunks.append(chunk)
    return b"".join(chunks)
