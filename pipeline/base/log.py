"""Logging for a pipeline run: structlog, JSON in CI, readable on a terminal.

Library modules only call ``structlog.get_logger(__name__)``; this module is
the one place that configures structlog, and only the doit layer calls it.

The level is ``info`` (one line per finished step) unless ``doit
log_level=debug`` or ``ROOTFS_LOG_LEVEL`` asks for another (``debug`` adds
each step's phase timings and the library's own events). The format is
chosen, in order, by ``doit log=json|console``, the ``ROOTFS_LOG``
environment variable, and finally whether stderr is a terminal: JSON
lines (one object per event, for CI and for tests that count what ran)
when it is not, short console lines when it is (a finished step and the
run's summary in the terminal view's short forms, ``base.terminal``; every
other event in the same columns, ``base.eventline``). Task actions bind
``task``, ``image`` and ``digest`` with ``bound(...)``; contextvars keep the
binding per worker thread.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import structlog

from pipeline.base.eventline import event_line
from pipeline.base.terminal import Terminal, step_line, summary_table
from pipeline.errors import SettingError

__all__ = ["LOG_VAR", "LOG_LEVEL_VAR", "LOG_MODES", "configure_logging", "bound", "choose_mode",
           "choose_level"]

LOG_VAR = "ROOTFS_LOG"
LOG_LEVEL_VAR = "ROOTFS_LOG_LEVEL"
LOG_MODES = ("json", "console")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}


class _TerminalLogger:
    """structlog's final logger: each rendered event is one line above the status line."""

    def __init__(self, terminal: Terminal) -> None:
        self._terminal = terminal

    def msg(self, message: str) -> None:
        self._terminal.write_line(message)

    debug = info = warning = warn = error = critical = exception = fatal = failure = msg
    err = log = msg


class _ReportRenderer:
    """Console lines: a finished step as one short line (``terminal.step_line``), the
    run's summary as its table, every other event as one short line too
    (``eventline.event_line``); structlog's own form only for an exception's traceback."""

    def __init__(self, fallback: Any) -> None:
        self._fallback = fallback

    def __call__(self, logger: Any, name: str, event: dict[str, Any]) -> str:
        kind = event.get("event")
        if kind == "task.done":
            return step_line(event)
        if kind == "run.summary" and isinstance(event.get("images"), list):
            return summary_table(event["images"], float(event.get("seconds") or 0))
        if event.get("exc_info") or event.get("exception"):
            text: str = self._fallback(logger, name, event)
            return text
        return event_line(event)


def _chosen(requested: str | None, environ: dict[str, str] | Any, doit_var: str, var: str,
            allowed: Iterable[str], *, lower: bool = False) -> str | None:
    """The explicit request (doit ``doit_var=...``), else the environment variable ``var``,
    checked; else None."""
    for name, candidate in ((doit_var, requested), (var, environ.get(var))):
        if candidate:
            value = candidate.lower() if lower else candidate
            if value not in allowed:
                raise SettingError(name, candidate, "one of " + ", ".join(allowed))
            return value
    return None


def choose_mode(requested: str | None, environ: dict[str, str] | Any, stream: TextIO) -> str:
    """The log format: the explicit request, else ``ROOTFS_LOG``, else by terminal."""
    chosen = _chosen(requested, environ, "log", LOG_VAR, LOG_MODES)
    if chosen is not None:
        return chosen
    isatty = getattr(stream, "isatty", None)
    return "console" if isatty and isatty() else "json"


def choose_level(requested: str | None, environ: dict[str, str] | Any) -> str:
    """The log level: the explicit request, else ``ROOTFS_LOG_LEVEL``, else info."""
    return _chosen(requested, environ, "log_level", LOG_LEVEL_VAR, LEVELS, lower=True) or "info"


def configure_logging(*, mode: str, terminal: Terminal, level: str = "info") -> None:
    """Configure structlog for this process; ``mode`` is "json" or "console"."""
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    if mode == "json":
        processors += [structlog.processors.format_exc_info,
                       structlog.processors.JSONRenderer(sort_keys=False)]
    else:
        colors = bool(terminal.interactive)
        processors.append(_ReportRenderer(structlog.dev.ConsoleRenderer(colors=colors)))
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS[level]),
        logger_factory=lambda *args: _TerminalLogger(terminal),
        cache_logger_on_first_use=False,
    )


@contextmanager
def bound(**values: object) -> Iterator[None]:
    """Bind ``values`` (task, image, digest...) to every log line in this thread."""
    clean = {k: v for k, v in values.items() if v is not None}
    with structlog.contextvars.bound_contextvars(**clean):
        yield


def stderr_terminal() -> Terminal:
    return Terminal(sys.stderr)
