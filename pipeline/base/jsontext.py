"""JSON from outside, parsed only after its nesting depth is known to be small.

``json.loads`` recurses once per nested array or object: a few KB of ``[``
(an index, an error body, a token answer, a hand-edited lock file) end in a
``RecursionError`` deep inside the parser, which reads as a crash. Every
document we parse is a handful of levels deep (an OCI index: object, array,
descriptor, platform, features array: five), so ``MAX_JSON_DEPTH`` is far
above any real one and far below Python's recursion limit.

The depth scan is linear and runs in C for the most part: strings are cut out
by one regular expression, then only brackets are left to count.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "JsonTooDeep", "json_depth", "loads_bounded"]

# Real documents nest 5-8 levels; Python's parser dies near 1,000. 64 leaves
# room for any annotation-heavy document and none for a bomb.
MAX_JSON_DEPTH = 64

# A JSON string: quote, then anything but quote or backslash, or an escape.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JsonTooDeep(ValueError):
    """The document nests arrays and objects deeper than allowed."""

    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"nested more than {limit} levels deep (at least {depth})")
        self.depth = depth
        self.limit = limit


def json_depth(text: bytes | str, *, stop_after: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of ``[``/``{`` outside strings (stops counting past ``stop_after``)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = deepest = 0
    for byte in brackets:
        if byte in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_after:
                    break
        else:
            depth -= 1
    return deepest


def loads_bounded(text: bytes | str, *, max_depth: int = MAX_JSON_DEPTH, **options: Any) -> Any:
    """``json.loads`` that raises ``JsonTooDeep`` (a ValueError) instead of recursing too far."""
    depth = json_depth(text, stop_after=max_depth)
    if depth > max_depth:
        raise JsonTooDeep(depth, max_depth)
    return json.loads(text, **options)
