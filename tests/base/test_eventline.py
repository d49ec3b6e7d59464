"""Every event on a terminal is one short line: sizes, times and digests shortened,
outside text escaped; JSON lines are untouched."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from pipeline.base.eventline import event_line
from pipeline.base.log import configure_logging
from pipeline.base.terminal import Terminal

HEX = "ab" * 32


@pytest.fixture(autouse=True)
def reset_structlog():  # type: ignore[no-untyped-def]
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


@pytest.mark.parametrize("fields, line", [
    pytest.param({"event": "run.finished", "ran": 12, "up_to_date": 3, "failed": 1,
                  "not_run": 0, "seconds": 4.21, "level": "info"},
                 f"{'run':<10} {'':<32} finished: 12 ran, 3 up to date, 1 failed in 4.2 s",
                 id="run-finished"),
    pytest.param({"event": "run.unchanged", "images": 1000, "tasks": 5000, "seconds": 0.031},
                 f"{'run':<10} {'':<32} nothing to do: 1000 images up to date, checked in 31 ms",
                 id="run-unchanged"),
    pytest.param({"event": "gc.would_remove", "task": "gc", "kind": "layer",
                  "entry": f"layers/{HEX}", "bytes": 123456, "images": ["a", "b"]},
                 f"{'gc':<10} {'layers/abababababab':<32} would remove layer, 120.6 KiB, a, b",
                 id="gc-entry"),
    pytest.param({"event": "gc.removed", "task": "gc", "kind": "blob",
                  "entry": f"blobs/sha256/{HEX}", "bytes": 10, "images": []},
                 f"{'gc':<10} {'blobs/sha256/abababababab':<32} removed blob, 10 B, no image",
                 id="gc-unowned"),
    pytest.param({"event": "gc.by_image", "task": "gc", "images": "a", "kind": "flat",
                  "entries": 3, "bytes": 99999, "dry_run": True},
                 f"{'gc':<10} {'':<32} a: would free 97.7 KiB in 3 flat entries", id="gc-group"),
    pytest.param({"event": "source.fallback", "task": "resolve:a", "image": "a",
                  "level": "warning", "source": "mirror.local",
                  "error": f"404 \x1b[31mred\nsha256:{HEX}"},
                 f"{'resolve':<10} {'a':<32} warning: fallback, source mirror.local, "
                 "404 \\x1b[31mred\\nsha256:abababababab", id="outside-text-escaped"),
    pytest.param({"event": "ext4.written", "task": "mkfs:a", "sha256": HEX, "size": 4 << 20,
                  "seconds": 1.54},
                 f"{'mkfs':<10} {'a':<32} written, sha256 abababababab, 4.0 MiB, 1.5 s",
                 id="library-event"),
    pytest.param({"event": "registry.retry", "task": "resolve:a", "level": "warning",
                  "what": "GET https://r.example/v2/a/manifests/1: 503", "attempt": 1,
                  "attempts": 5, "delay_s": 0.408},
                 f"{'resolve':<10} {'a':<32} warning: retry, GET https://r.example/v2/a/"
                 "manifests/1: 503, attempt 1, attempts 5, delay 0.4 s", id="retry"),
    pytest.param({"event": "fetch.progress", "digest": f"sha256:{HEX}", "done_bytes": 1000,
                  "total_bytes": 5 << 20},
                 f"{'fetch':<10} {'sha256:abababababab':<32} progress, done 1000 B, total 5.0 MiB",
                 id="progress"),
])
def test_an_event_is_one_short_line(fields: dict[str, object], line: str) -> None:
    assert event_line(fields) == line


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_no_event_prints_in_key_value_form() -> None:
    out = TTY()
    configure_logging(mode="console", terminal=Terminal(out))
    log = structlog.get_logger("pipeline.test")
    log.info("run.finished", ran=1, up_to_date=2, failed=0, not_run=0, seconds=0.5)
    log.warning("registry.retry", image="a", attempt=2, delay_seconds=1.25,
                reason="503 from https://r.example/v2/x\r\nFAILED forged")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert not any("=" in line or "timestamp" in line or line.startswith("{") for line in lines)
    assert lines[0].split() == "run finished: 1 ran, 2 up to date in 0.5 s".split()
    assert "warning: retry, attempt 2, delay 1.2 s" in lines[1] and "\\r\\nFAILED" in lines[1]


def test_in_ci_events_stay_json_lines_with_every_field() -> None:
    out = io.StringIO()
    configure_logging(mode="json", terminal=Terminal(out))
    structlog.get_logger().info("run.finished", ran=1, up_to_date=2, failed=0, not_run=0,
                                seconds=0.5)
    [event] = [json.loads(line) for line in out.getvalue().splitlines()]
    assert {k: event[k] for k in ("event", "ran", "up_to_date", "failed", "not_run",
                                  "seconds")} == {"event": "run.finished", "ran": 1,
                                                  "up_to_date": 2, "failed": 0, "not_run": 0,
                                                  "seconds": 0.5}
