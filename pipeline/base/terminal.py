"""The terminal view: a status line of what is running, one short line per finished
step, and the run's table at the end.

On a terminal, one status line at the bottom of stderr shows the long steps
running (the reporter's part) and every concurrent blob download (one
shared byte counter with rate and ETA)::

    mkfs a 12s, flatten b 3s  fetching 3 blobs  45.2 MiB / 120.0 MiB  12.3 MiB/s  ETA 0:06

Each part is set on its own (``Terminal.set_part``); the line joins them.
A finished step is one short line (``step_line``): step, image or shortened
digest, what it did, sizes and time; the run ends with a table
(``summary_table``).

Log lines are written *above* that line (``Terminal.write_line`` clears it,
writes, redraws), so progress and structured logs never garble each other.
Off a terminal (CI), nothing is drawn at all: the fetch task logs one line
when each blob is finished, and a long download reports its bytes every
``REPORT_INTERVAL_S`` through ``TransferProgress.report`` (a JSON event).

All of it is called from doit's worker threads, so every write holds one
lock; redraws are rate-limited so that a fast local registry does not spend
its time repainting.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Terminal", "TransferProgress", "BlobProgress", "format_bytes", "format_eta",
           "short_digest", "step_line", "summary_table", "REPORT_INTERVAL_S"]

# Repainting more often than this is invisible to a human and costs CPU.
REDRAW_INTERVAL_S = 0.1
# The rate is averaged over about this long: long enough to be stable,
# short enough to follow a stall.
RATE_WINDOW_S = 5.0
# Off a terminal, a download still running reports its bytes this often: a CI
# log shows a slow pull is alive without a line per chunk.
REPORT_INTERVAL_S = 10.0
# sha256: plus 12 hex digits, as docker shows image ids: unique enough to read.
SHORT_DIGEST_HEX = 12


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
        self._parts: dict[str, str] = {}
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

    def columns(self) -> int:
        """The terminal's width now (it may have been resized), 80 if it cannot say."""
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or 80
        except (AttributeError, OSError, ValueError):
            return 80

    def set_status(self, text: str) -> None:
        if not self.interactive:
            return
        # One row only: a status line that wraps leaves its first row behind at every
        # redraw ("\r" goes back to the start of the last row), a trail of stale lines.
        text = _clip(text, max(self.columns() - 1, 20))
        with self._lock:
            self._status = text
            self.stream.write("\r\x1b[K" + text)
            self.stream.flush()

    def clear_status(self) -> None:
        with self._lock:
            self._parts.clear()
            if self._status:
                self._status = ""
                self.stream.write("\r\x1b[K")
                self.stream.flush()

    def set_part(self, name: str, text: str) -> None:
        """Set (or with ``""`` remove) one part of the status line; the others stay."""
        if not self.interactive:
            return
        with self._lock:
            if text:
                self._parts[name] = text
            else:
                self._parts.pop(name, None)
            line = "  ".join(self._parts[k] for k in sorted(self._parts))
        if line:
            self.set_status(line)
        else:
            self.clear_status()


class BlobProgress:
    """Progress of one download, fed as ``BlobCache.fetch`` reports it: ``(written, total)``.

    ``written`` is cumulative and goes back to a smaller number when a
    download starts over after a failed resume; the difference is what moves
    the shared counter, so a restart takes back what it had counted.
    """

    __slots__ = ("_owner", "total", "done", "_reported")

    def __init__(self, owner: TransferProgress, total: int) -> None:
        self._owner = owner
        self.total = total
        self.done = 0
        self._reported = owner._clock()

    def __call__(self, written: int, total: int | None = None) -> None:
        delta, self.done = written - self.done, written
        self._owner._advance(delta)
        report = self._owner.report
        if report is not None and not self._owner.enabled:
            now = self._owner._clock()
            if now - self._reported >= REPORT_INTERVAL_S:
                self._reported = now
                report(written, self.total)

    def finish(self) -> None:
        self._owner._finish(self)


class TransferProgress:
    """All downloads of one run, drawn as one status line on a terminal."""

    def __init__(self, terminal: Terminal, *,
                 clock: Callable[[], float] = time.monotonic,
                 report: Callable[[int, int], None] | None = None) -> None:
        self.terminal = terminal
        self._clock = clock
        self.report = report
        """Off a terminal: called with (bytes so far, total) every REPORT_INTERVAL_S of
        each download (in the downloading thread, so its log binding applies)."""
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
        self.terminal.set_part("fetch", line)

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
        self.terminal.set_part("fetch", "")

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


def short_digest(digest: str) -> str:
    """``sha256:ab12cd34ef56``: the algorithm and 12 hex digits."""
    algorithm, sep, hexdigits = digest.partition(":")
    return f"{algorithm}:{hexdigits[:SHORT_DIGEST_HEX]}" if sep else digest[:SHORT_DIGEST_HEX]


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "~"


def step_line(fields: dict[str, object]) -> str:
    """One finished step (a ``task.done`` event's fields) as one short line."""
    step, _, subject = str(fields.get("task", "?")).partition(":")
    images = fields.get("images")
    if subject.startswith("sha256:"):
        subject = short_digest(subject)
        if isinstance(images, list) and images:
            subject += " (" + ",".join(map(str, images)) + ")"
    parts = [str(fields["outcome"])] if fields.get("outcome") else []
    for key in ("size", "bytes"):
        value = fields.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(format_bytes(value))
            break
    rate = fields.get("bytes_per_s")
    if isinstance(rate, (int, float)) and rate > 0:
        parts.append(f"at {format_bytes(rate)}/s")
    for key, unit in (("entries", "entries"), ("layers", "layers")):
        if isinstance(fields.get(key), int):
            parts.append(f"{fields[key]} {unit}")
    if isinstance(fields.get("manifest"), str):
        parts.append(short_digest(str(fields["manifest"])))
    if isinstance(fields.get("free"), int):
        parts.append(f"{format_bytes(int(str(fields['free'])))} free")
    seconds = fields.get("seconds")
    took = f"{seconds:6.1f} s" if isinstance(seconds, (int, float)) else ""
    what = _clip(", ".join(parts), 44)
    return f"{_clip(step, 10):<10} {_clip(subject, 32):<32} {what:<44} {took}".rstrip()


def summary_table(images: list[dict[str, object]], seconds: float) -> str:
    """The run's end: image, outcome, size, time, and one line of totals."""
    rows = [("image", "outcome", "size", "time")]
    for row in images:
        size, took = row.get("size"), row.get("seconds")
        rows.append((str(row["image"]), str(row["outcome"]),
                     format_bytes(size) if isinstance(size, int) else "-",
                     f"{took:.1f} s" if isinstance(took, (int, float)) and took else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}"
             for r in rows]
    counts: dict[str, int] = {}
    for row in images:
        counts[str(row["outcome"])] = counts.get(str(row["outcome"]), 0) + 1
    total = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    plural = "s" if len(images) != 1 else ""
    lines.append(f"{len(images)} image{plural}: {total} in {seconds:.1f} s")
    return "\n".join(lines)
