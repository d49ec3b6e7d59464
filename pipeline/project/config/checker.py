"""Checking images.toml's parsed tables: every error names the file, the line and the key.

The TOML parser gives plain dicts; a ``Checker`` holds the file's path and
its source lines so that each refusal (a wrong type, an unknown key with
the closest known one, a value its parser refuses) becomes one
``ManifestError`` saying where, in the user's own terms.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import BadPlatform, ManifestError, PipelineError
from pipeline.project.config.source import SourceLines

__all__ = ["Checker", "kind_of"]


def kind_of(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "float", str: "string",
             list: "array", dict: "table"}
    return f"{names.get(type(value), type(value).__name__)} {value!r}"


class Checker:
    """Carries the file name and source lines so every error can say where."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = SourceLines.from_text(text)

    def fail(self, message: str, *where: str, image: str | None = None) -> ManifestError:
        key = where[-1] if where else None
        return ManifestError(message, path=str(self.path), line=self.lines.line(*where),
                             image=image, key=key)

    def table(self, value: object, *where: str, image: str | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(f"`{'.'.join(where)}` must be a table, got {kind_of(value)}",
                            *where, image=image)
        return value

    def known(self, table: dict[str, Any], allowed: tuple[str, ...], *where: str,
              image: str | None = None) -> None:
        for key in table:
            if key not in allowed:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.fail(f"unknown key {key!r}{suggestion}; allowed: {', '.join(allowed)}",
                                *where, key, image=image)

    def string(self, value: object, *where: str, image: str | None = None) -> str:
        if not isinstance(value, str):
            raise self.fail(f"`{where[-1]}` must be a string, got {kind_of(value)}",
                            *where, image=image)
        return value

    def parsed(self, parse: Callable[[str], Any], value: object, *where: str,
               image: str | None = None) -> Any:
        text = self.string(value, *where, image=image)
        try:
            return parse(text)
        except (ManifestError, BadPlatform) as err:
            # Parsers without a file to name say "images.toml: ..."; say it once, here.
            reason = str(err).removeprefix("images.toml: ")
            raise self.fail(reason, *where, image=image) from err
        except PipelineError as err:
            raise self.fail(f"bad `{where[-1]}`: {err}", *where, image=image) from err
        except ValueError as err:
            raise self.fail(f"bad `{where[-1]}` {text!r}: {err}", *where, image=image) from err
