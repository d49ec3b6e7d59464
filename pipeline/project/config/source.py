"""Line numbers of tables and keys in TOML source text, for error messages.

``tomllib`` returns plain dicts without positions, so a message about a bad
value in ``images.toml`` would otherwise say only *which* key, not *where*.
This module scans the source once for table headers (``[images.alpine]``)
and key assignments (``size = ...``, ``images.alpine.size = ...``,
``alpine = { ref = ... }``) and remembers the first line of each.

It is a hint, never a parser: it trusts nothing it finds and is only asked
about keys that tomllib already accepted. Multi-line strings and arrays are
skipped so that their contents are not mistaken for keys; anything it cannot
place simply has no line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["SourceLines"]

Path_ = tuple[str, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_SPACE = re.compile(r"[ \t]*")


def _key_path(text: str, pos: int) -> tuple[Path_, int] | None:
    """Parse a dotted key starting at ``pos``; return (parts, end) or None."""
    parts: list[str] = []
    while True:
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if pos >= len(text):
            return None
        quote = text[pos]
        if quote in "\"'":
            end = pos + 1
            chars: list[str] = []
            while end < len(text) and text[end] != quote:
                # Basic strings may escape a quote; literal strings may not.
                if quote == '"' and text[end] == "\\" and end + 1 < len(text):
                    chars.append(text[end + 1])
                    end += 2
                    continue
                chars.append(text[end])
                end += 1
            if end >= len(text):
                return None
            parts.append("".join(chars))
            pos = end + 1
        else:
            bare = _BARE.match(text, pos)
            if bare is None:
                return None
            parts.append(bare.group())
            pos = bare.end()
        pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]
        if pos < len(text) and text[pos] == ".":
            pos += 1
            continue
        return tuple(parts), pos


@dataclass(slots=True)
class SourceLines:
    """First line (1-based) of every table header and key assignment."""

    tables: dict[Path_, int] = field(default_factory=dict)
    keys: dict[Path_, int] = field(default_factory=dict)

    @classmethod
    def from_text(cls, text: str) -> SourceLines:
        found = cls()
        table: Path_ = ()
        open_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if open_multiline is not None:
                if open_multiline in line:
                    open_multiline = None
                continue
            stripped = line.strip()
            if not stripped or stripped.startswith("#"):
                continue
            if stripped.startswith("["):
                array = stripped.startswith("[[")
                parsed = _key_path(stripped, 2 if array else 1)
                if parsed is not None:
                    table = parsed[0]
                    found.tables.setdefault(table, number)
                continue
            parsed = _key_path(line, 0)
            if parsed is None:
                continue
            key, end = parsed
            rest = line[end:].lstrip()
            if not rest.startswith("="):
                continue
            for depth in range(1, len(key) + 1):
                found.keys.setdefault(table + key[:depth], number)
            value = rest[1:].lstrip()
            for delimiter in ('"""', "'''"):
                if value.startswith(delimiter) and value.count(delimiter) == 1:
                    open_multiline = delimiter
            found._inline_table(table + key, value, number)
        return found

    def _inline_table(self, prefix: Path_, value: str, number: int) -> None:
        """Record keys of a one-line inline table ``{ ref = "...", size = "1G" }``."""
        if not value.startswith("{"):
            return
        pos = 1
        while pos < len(value):
            parsed = _key_path(value, pos)
            if parsed is None:
                return
            key, end = parsed
            if not value[end:].lstrip().startswith("="):
                return
            self.keys.setdefault(prefix + key, number)
            # Skip to the next top-level comma; values here are short scalars.
            depth, quote, pos = 0, "", end
            while pos < len(value):
                char = value[pos]
                if quote:
                    if char == quote:
                        quote = ""
                elif char in "\"'":
                    quote = char
                elif char in "[{":
                    depth += 1
                elif char in "]}":
                    if depth == 0:
                        return
                    depth -= 1
                elif char == "," and depth == 0:
                    pos += 1
                    break
                pos += 1

    def line(self, *path: str) -> int | None:
        """The line of a key (or table) at ``path``, else of its nearest enclosing table."""
        while path:
            if path in self.keys:
                return self.keys[path]
            if path in self.tables:
                return self.tables[path]
            path = path[:-1]
        return None
