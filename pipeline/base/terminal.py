"""Download progress: a live byte counter with rate and ETA on a terminal.

On a terminal, every concurrent blob download feeds one shared status line
at the bottom of stderr::

    fetching 3 blobs  45.2 MiB / 120.0 MiB  12.3 MiB/s  ETA 0:06

Log lines are written *above* that line (``Terminal.write_line`` clears it,
writes, redraws), so progress and structured logs never garble each other.
Off a terminal (CI), nothing is drawn at all: the fetch task logs one line
when each blob is finished, which is what a CI log wants.

All of it is called from doit's worker threads, so every write holds one
lock; redraws are rate-limited so that a fast local registry does not spend
its time repainting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Terminal", "TransferProgress", "BlobProgress", "format_bytes", "format_eta"]

# Repainting more often than this is invisible to a human and costs CPU.
REDRAW_INTERVAL_S = 0.1
# The rate is averaged over about this long: long enough to be stable,
# short enough to follow a stall.
RATE_WINDOW_S = 5.0


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("internal error: unreachable")


def format_eta(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds > 99 * 3600:
        return "--:--"
    seconds = int(seconds + 0.5)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Terminal:
    """A stream with an optional status line that other lines are written above."""

    def __init__(self, stream: TextIO, *, interactive: bool | None = None) -> None:
        self.stream = stream
        if interactive is None:
            isatty = getattr(stream, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self._status = ""
        self._lock = threading.Lock()

    def write_line(self, text: str) -> None:
        """Write one line (no trailing newline needed) above the status line."""
        with self._lock:
            if self._status:
                self.stream.write("\r\x1b[K")
            self.stream.write(text.rstrip("\n") + "\n")
            if self._status:
                self.stream.write(self._status)
            self.stream.flush()

    def set_status(self, text: str) -> None:
        if not self.interactive:
            return
        with self._lock:
            self._status = text
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def clear_status(self) -> None:
        with self._lock:
            if self._status:
                self._status = ""
                self.stream.write("\r\x1b[K")
                self.stream.flush()


class BlobProgress:
    """Progress of one download, fed as ``BlobCache.fetch`` reports it: ``(written, total)``.

    ``written`` is cumulative and goes back to a smaller number when a
    download starts over after a failed resume; the difference is what moves
    the shared counter, so a restart takes back what it had counted.
    """

    __slots__ = ("_owner", "total", "done")

    def __init__(self, owner: TransferProgress, total: int) -> None:
        self._owner = owner
        self.total = total
        self.done = 0

    def __call__(self, written: int, total: int | None = None) -> None:
        delta, self.done = written - self.done, written
        self._owner._advance(delta)

    def finish(self) -> None:
        self._owner._finish(self)


class TransferProgress:
    """All downloads of one run, drawn as one status line on a terminal."""

    def __init__(self, terminal: Terminal, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.terminal = terminal
        self._clock = clock
        self._lock = threading.Lock()
        self._active: set[BlobProgress] = set()
        self._total = 0
        self._done = 0
        self._samples: list[tuple[float, int]] = []
        self._last_draw = 0.0

    @property
    def enabled(self) -> bool:
        return self.terminal.interactive

    def start(self, total: int) -> BlobProgress:
        blob = BlobProgress(self, total)
        with self._lock:
            self._active.add(blob)
            self._total += total
        return blob

    def _advance(self, nbytes: int) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._done += nbytes
            now = self._clock()
            self._samples.append((now, self._done))
            while self._samples and now - self._samples[0][0] > RATE_WINDOW_S:
                self._samples.pop(0)
            if now - self._last_draw < REDRAW_INTERVAL_S:
                return
            self._last_draw = now
            line = self._render()
        self.terminal.set_status(line)

    def _finish(self, blob: BlobProgress) -> None:
        with self._lock:
            self._active.discard(blob)
            # Account for what the server did not stream (a cached blob) so
            # the totals stay honest.
            self._done += blob.total - blob.done if self.enabled else 0
            if self._active:
                return
            self._total = self._done = 0
            self._samples.clear()
        self.terminal.clear_status()

    def rate(self) -> float | None:
        """Bytes per second over the last RATE_WINDOW_S, or None before two samples."""
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        if t1 - t0 <= 0:
            return None
        return (b1 - b0) / (t1 - t0)

    def _render(self) -> str:
        rate = self.rate()
        remaining = max(self._total - self._done, 0)
        eta = remaining / rate if rate else None
        speed = f"{format_bytes(rate)}/s" if rate else "-- /s"
        count = len(self._active)
        return (f"fetching {count} blob{'s' if count != 1 else ''}  "
                f"{format_bytes(self._done)} / {format_bytes(self._total)}  "
                f"{speed}  ETA {format_eta(eta)}")
