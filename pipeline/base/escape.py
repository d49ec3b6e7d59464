"""Text from outside, made safe to print on one terminal line.

A registry's error message, an image's architecture string or a file name
in a layer may hold ESC, BEL, CR, newlines or C1 controls. Printed raw, they
repaint the terminal, ring bells, or forge a second ``FAILED`` line that CI
parses. Everything we print that we did not write passes through here.
"""

from __future__ import annotations

__all__ = ["escape_text"]


def escape_text(text: str, limit: int = 300) -> str:
    """Text from outside made safe for one terminal line: control characters escaped, cut.

    ESC, BEL, CR, newlines and the C1 controls would let a registry or an
    image rewrite the terminal or split a ``FAILED`` line; they become
    ``\\x1b``-style escapes. At most ``limit`` characters are kept.
    """
    out = "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape")
                  .decode("ascii") for ch in text[:limit])
    return out + ("..." if len(text) > limit else "")
