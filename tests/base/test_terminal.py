"""Download progress on a terminal, and silence off one."""

from __future__ import annotations

import io

import pytest

from pipeline.base.terminal import Terminal, TransferProgress, format_bytes, format_eta


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
