"""Download progress on a terminal, and silence off one."""

from __future__ import annotations

import io

import pytest

from pipeline.base.terminal import (
    REPORT_INTERVAL_S,
    Terminal,
    TransferProgress,
    format_bytes,
    format_eta,
    step_line,
    summary_table,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_status_line_shows_bytes_rate_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    progress = TransferProgress(Terminal(out, interactive=True), clock=clock)
    a = progress.start(10 << 20)
    b = progress.start(10 << 20)
    a(1 << 20, 10 << 20)
    clock.now += 1
    b(1 << 20, 10 << 20)
    assert out.getvalue().rsplit("\r\x1b[K", 1)[-1] == (
        "fetching 2 blobs  2.0 MiB / 20.0 MiB  1.0 MiB/s  ETA 0:18")
    a.finish()
    b.finish()
    assert out.getvalue().endswith("\r\x1b[K")  # status cleared when all are done


def test_log_lines_go_above_the_status_line() -> None:
    out = io.StringIO()
    terminal = Terminal(out, interactive=True)
    terminal.set_status("fetching")
    terminal.write_line("event one")
    assert out.getvalue() == "\r\x1b[Kfetching\r\x1b[Kevent one\nfetching"


def test_off_a_terminal_nothing_is_drawn() -> None:
    out = io.StringIO()
    progress = TransferProgress(Terminal(out))  # StringIO is not a tty
    blob = progress.start(100)
    blob(50, 100)
    blob(0, 100)
    blob(100, 100)
    blob.finish()
    assert out.getvalue() == ""


def test_a_restarted_download_takes_back_what_it_counted() -> None:
    out, clock = io.StringIO(), Clock()
    progress = TransferProgress(Terminal(out, interactive=True), clock=clock)
    blob = progress.start(1000)
    blob(600, 1000)
    clock.now += 1
    blob(100, 1000)  # the cache started over from byte 0
    assert "100 B / 1000 B" in out.getvalue().rsplit("\r\x1b[K", 1)[-1]


@pytest.mark.parametrize("n, text", [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                     (5 << 30, "5.0 GiB"), (3 << 40, "3072.0 GiB")])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize("s, text", [(None, "--:--"), (0.4, "0:00"), (61, "1:01"),
                                     (3725, "1:02:05"), (1e9, "--:--")])
def test_format_eta(s: float | None, text: str) -> None:
    assert format_eta(s) == text


def test_status_parts_share_one_line() -> None:
    out = io.StringIO()
    terminal = Terminal(out, interactive=True)
    terminal.set_part("steps", "mkfs a 3s")
    terminal.set_part("fetch", "fetching 1 blob")
    assert out.getvalue().rsplit("\r\x1b[K", 1)[-1] == "fetching 1 blob  mkfs a 3s"
    terminal.set_part("fetch", "")
    assert out.getvalue().rsplit("\r\x1b[K", 1)[-1] == "mkfs a 3s"
    terminal.set_part("steps", "")
    assert out.getvalue().endswith("\r\x1b[K")


def test_off_a_terminal_a_long_download_reports_every_interval() -> None:
    clock, reports = Clock(), []
    progress = TransferProgress(Terminal(io.StringIO()), clock=clock,
                                report=lambda done, total: reports.append((done, total)))
    blob = progress.start(1000)
    blob(100, 1000)
    clock.now += REPORT_INTERVAL_S - 0.1
    blob(200, 1000)
    clock.now += 0.2
    blob(300, 1000)
    clock.now += REPORT_INTERVAL_S
    blob(900, 1000)
    blob.finish()
    assert reports == [(300, 1000), (900, 1000)]


SHA = "sha256:" + "ab12cd34ef56" + "0" * 52

# (id, task.done fields, the line)
STEP_LINES = [
    ("mkfs-built", {"task": "mkfs:alpine", "outcome": "built", "size": 64 << 20,
                    "free": 12 << 20, "sha256": "f" * 64, "seconds": 1.234},
     "mkfs       alpine                           built, 64.0 MiB, 12.0 MiB free"
     "                  1.2 s"),
    ("fetch-shortens-the-digest", {"task": f"fetch-blob:{SHA}", "images": ["a", "b"],
                                   "outcome": "fetched", "bytes": 3 << 20,
                                   "bytes_per_s": 45 << 20, "seconds": 0.07},
     "fetch-blob sha256:ab12cd34ef56 (a,b)        fetched, 3.0 MiB, at 45.0 MiB/s"
     "                 0.1 s"),
    ("unpack", {"task": f"unpack:{SHA}", "entries": 1234, "bytes": 1 << 20, "seconds": 2},
     "unpack     sha256:ab12cd34ef56              1.0 MiB, 1234 entries"
     "                           2.0 s"),
    ("resolve", {"task": "resolve:a", "manifest": SHA, "layers": 2, "seconds": 0.5},
     "resolve    a                                2 layers, sha256:ab12cd34ef56"
     "                   0.5 s"),
]


@pytest.mark.parametrize("fields, line", [s[1:] for s in STEP_LINES],
                         ids=[s[0] for s in STEP_LINES])
def test_a_finished_step_is_one_short_line(fields: dict[str, object], line: str) -> None:
    assert step_line(fields) == line


def test_the_summary_table() -> None:
    rows = [{"image": "alpine", "outcome": "built", "size": 64 << 20, "seconds": 2.5},
            {"image": "debian", "outcome": "up to date", "size": 1 << 30, "seconds": 0},
            {"image": "nope", "outcome": "failed", "size": None, "seconds": 0.4}]
    assert summary_table(rows, 3.04) == (
        "image   outcome         size   time\n"
        "alpine  built       64.0 MiB  2.5 s\n"
        "debian  up to date   1.0 GiB      -\n"
        "nope    failed             -  0.4 s\n"
        "3 images: 1 built, 1 up to date, 1 failed in 3.0 s")


def test_the_status_line_never_wraps(monkeypatch: pytest.MonkeyPatch) -> None:
    # A wrapped status line leaves its first row behind at every redraw.
    out = io.StringIO()
    terminal = Terminal(out, interactive=True)
    monkeypatch.setattr(terminal, "columns", lambda: 40)
    terminal.set_status("fetching 1 blob  59.6 MiB / 84.4 MiB  50.9 MiB/s  ETA 0:00  fetch-blob "
                        "sha256:a9bb4f8f264cd36c9c28c801466a06c0")
    drawn = out.getvalue().rpartition("\x1b[K")[2]
    assert len(drawn) == 39 and drawn.endswith("~")
    terminal.write_line("mkfs  app00  built")
    assert out.getvalue().endswith("mkfs  app00  built\n" + drawn)


def test_a_terminal_without_a_size_is_80_columns() -> None:
    assert Terminal(io.StringIO(), interactive=True).columns() == 80
