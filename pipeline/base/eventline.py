"""Every other log event on a terminal as one short line, in the columns of a finished step.

A finished step (``terminal.step_line``) and the run's table have their own
forms; the rest (the run's end, warnings from a registry or a cache, what
gc removes) would otherwise print in structlog's long ``key=value`` form,
with timestamps and 71-character digests. Here each becomes::

    <step or area> <image, short digest or entry>  <words>, <value>, <value>

Sizes in bytes become ``1.2 MiB``, seconds ``0.4 s``, digests and content keys
their first 12 hex digits, and every value (much of it from outside: a
registry's message, a file name in a layer) passes through ``escape_text``
before it reaches the terminal. JSON lines (CI) never come here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pipeline.base.escape import escape_text
from pipeline.base.terminal import format_bytes, short_digest

__all__ = ["event_line"]

# What the columns already say, or what only a machine reads.
_HIDDEN = frozenset({"timestamp", "level", "event", "logger", "task", "image", "digest",
                     "images", "traceback", "hint"})
# Digests (sha256:<64 hex>) and bare content keys (chain and cache keys) shortened
# wherever they appear, error messages and paths included.
_LONG_DIGEST = re.compile(r"\b(sha256|sha512):([0-9a-f]{12})[0-9a-f]{52,116}\b")
_LONG_KEY = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}(?:[0-9a-f]{64})?\b")
# Values that read best without their name ("failed, connection refused").
_SAID_ALONE = frozenset({"error", "reason", "message", "outcome", "what"})
# One value longer than this is cut: a line stays one line on a usual terminal.
VALUE_MAX_CHARS = 160


def _text(value: object) -> str:
    text = escape_text(str(value), VALUE_MAX_CHARS)
    return _LONG_KEY.sub(r"\1", _LONG_DIGEST.sub(r"\1:\2", text))


def _is_bytes(key: str) -> bool:
    return key in ("bytes", "size", "free") or key.endswith("_bytes")


def _value(key: str, value: object) -> str:
    if isinstance(value, bool) or value is None:
        return f"{key.replace('_', ' ')}" if value else f"no {key.replace('_', ' ')}"
    if isinstance(value, int) and _is_bytes(key):
        named = key.removesuffix("_bytes").replace("_", " ")
        return format_bytes(value) if key in ("bytes", "size") else f"{named} {format_bytes(value)}"
    if key in _SAID_ALONE:
        return _text(value)
    if isinstance(value, (int, float)) and (key == "seconds" or key.endswith(("_seconds", "_s"))):
        named = key.removesuffix("seconds").removesuffix("s").replace("_", " ")
        return f"{named}{value:.1f} s"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_text(k)} {_sized(v) if _is_bytes(key) else _text(v)}"
                          for k, v in value.items())
        return f"{key.replace('_', ' ')}: {inner}"
    if isinstance(value, (list, tuple)):
        return f"{key.replace('_', ' ')}: {', '.join(_text(v) for v in value) or '-'}"
    return f"{key.replace('_', ' ')} {_text(value)}"


def _sized(value: object) -> str:
    return format_bytes(value) if isinstance(value, int) else _text(value)


def _words(name: str, f: Mapping[str, object]) -> str | None:
    """The events a user reads at the end of a run, in sentences."""
    if name == "run.finished":
        parts = [f"{f.get('ran', 0)} ran", f"{f.get('up_to_date', 0)} up to date"]
        parts += [f"{f[k]} {k.replace('_', ' ')}" for k in ("failed", "not_run") if f.get(k)]
        return f"finished: {', '.join(parts)} in {_value('seconds', f.get('seconds', 0))}"
    if name == "run.unchanged":
        seconds = f.get("seconds")
        took = f"{seconds * 1000:.0f} ms" if isinstance(seconds, (int, float)) else "-"
        return f"nothing to do: {f.get('images')} images up to date, checked in {took}"
    if name in ("gc.would_remove", "gc.removed"):
        verb = "would remove" if name == "gc.would_remove" else "removed"
        images = f.get("images")
        who = ", ".join(_text(i) for i in images) if isinstance(images, list) else ""
        return f"{verb} {_text(f.get('kind'))}, {_sized(f.get('bytes'))}, {who or 'no image'}"
    if name == "gc.by_image":
        verb = "would free" if f.get("dry_run") else "freed"
        count = f.get("entries")
        return (f"{_text(f.get('images'))}: {verb} {_sized(f.get('bytes'))} in "
                f"{count} {_text(f.get('kind'))} entr{'y' if count == 1 else 'ies'}")
    if name == "gc.collected":
        verb = "would free" if f.get("dry_run") else "freed"
        return (f"{verb} {_sized(f.get('freed_bytes'))} in {f.get('removed')} entries, "
                f"{f.get('kept')} kept")
    return None


def _columns(name: str, f: Mapping[str, object]) -> tuple[str, str]:
    """(step, subject): the task's step and image or digest, else the event's area."""
    step, _, subject = str(f.get("task") or "").partition(":")
    if not step:
        step = name.partition(".")[0]
    if name.startswith("gc.") and "entry" in f:
        subject = str(f["entry"])
    elif isinstance(f.get("image"), str):
        subject = str(f["image"])
    elif isinstance(f.get("digest"), str):
        subject = short_digest(str(f["digest"]))
    elif subject.startswith(("sha256:", "sha512:")):
        subject = short_digest(subject)
    return _text(step), _text(subject)


def event_line(fields: Mapping[str, object]) -> str:
    """One log event (its fields, as structlog hands them over) as one short line."""
    name = str(fields.get("event", "?"))
    step, subject = _columns(name, fields)
    words = _words(name, fields)
    if words is None:
        rest = [_value(k, v) for k, v in fields.items()
                if k not in _HIDDEN and not (name.startswith("gc.") and k == "entry")]
        words = ", ".join([_text(name.partition(".")[2] or name).replace("_", " "), *rest])
    level = str(fields.get("level", ""))
    if level in ("warning", "error", "critical"):
        words = f"{level}: {words}"
    return f"{step[:10]:<10} {subject[:32]:<32} {words}".rstrip()
