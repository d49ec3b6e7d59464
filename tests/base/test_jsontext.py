"""Bounded JSON: every parser of outside JSON (and TOML) ends deep nesting in one clear line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.base.escape import escape_text
from pipeline.base.jsontext import (
    MAX_JSON_DEPTH,
    JsonTooDeep,
    json_depth,
    loads_bounded,
)
from pipeline.errors import BadImage, LockError, ManifestError, PipelineError
from pipeline.oci import mediatypes as mt
from pipeline.oci.documents import parse_manifest_document
from pipeline.project.config import parse_manifest
from pipeline.project.lockfile import read_lock

# 200,000 brackets: far past Python's recursion limit, a few hundred KB.
BOMB = b"[" * 200_000


@pytest.mark.parametrize("text, depth", [
    (b"{}", 1), (b"[[1],[2,[3]]]", 3), (b'{"a": "[[[[[["}', 1), (b'["\\"[[["]', 1),
    (b"", 0), (b"17", 0), ('{"ü": ["ä"]}', 2),
], ids=["object", "arrays", "brackets-in-string", "escaped-quote", "empty", "scalar",
        "unicode"])
def test_depth(text: bytes | str, depth: int) -> None:
    assert json_depth(text) == depth


def test_loads_bounded_accepts_the_limit_and_refuses_one_more() -> None:
    assert loads_bounded("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH) is not None
    with pytest.raises(JsonTooDeep, match=f"nested more than {MAX_JSON_DEPTH} levels deep"):
        loads_bounded("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1))


def _lock(tmp_path: Path) -> None:
    path = tmp_path / "images.lock.json"
    path.write_bytes(b'{"lockfile_version": 1, "images": ' + BOMB + b"}")
    read_lock(path)


def _manifest_document(tmp_path: Path) -> None:
    parse_manifest_document(b'{"schemaVersion": 2, "layers": ' + BOMB + b"}",
                            mt.OCI_MANIFEST, where="GET /v2/x/manifests/1")


def _index_document(tmp_path: Path) -> None:
    parse_manifest_document(b'{"schemaVersion": 2, "manifests": ' + BOMB + b"}",
                            mt.OCI_INDEX, where="GET /v2/x/manifests/1")


def _docker_list_document(tmp_path: Path) -> None:
    parse_manifest_document(b'{"schemaVersion": 2, "manifests": [{"platform": ' + BOMB + b"}]}",
                            mt.DOCKER_MANIFEST_LIST, where="GET /v2/x/manifests/1")


def _toml(tmp_path: Path) -> None:
    parse_manifest("x = " + "[" * 200_000, tmp_path / "images.toml")


def _toml_inline_tables(tmp_path: Path) -> None:
    parse_manifest("x = " + "{a = " * 20_000, tmp_path / "images.toml")


NESTED: list[tuple[str, Callable[[Path], None], type[PipelineError], str]] = [
    ("lock-file", _lock, LockError, "images.lock.json: nested more than 64 levels deep"),
    ("oci-manifest", _manifest_document, BadImage,
     "manifest is nested more than 64 levels deep"),
    ("oci-index", _index_document, BadImage, "manifest is nested more than 64 levels deep"),
    ("docker-manifest-list", _docker_list_document, BadImage,
     "manifest is nested more than 64 levels deep"),
    ("toml-arrays", _toml, ManifestError, "nested too deeply to parse"),
    ("toml-inline-tables", _toml_inline_tables, ManifestError, "nested too deeply to parse"),
]


@pytest.mark.parametrize("parse, error, message", [r[1:] for r in NESTED],
                         ids=[r[0] for r in NESTED])
def test_deep_nesting_is_one_clear_error(tmp_path: Path, parse: Callable[[Path], None],
                                         error: type[PipelineError], message: str) -> None:
    with pytest.raises(error, match=message) as caught:
        parse(tmp_path)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text, shown", [
    ("plain text", "plain text"),
    ("\x1b[2Jwiped", "\\x1b[2Jwiped"),
    ("bell\x07", "bell\\x07"),
    ("two\nlines\r", "two\\nlines\\r"),
    ("c1\x9bcsi", "c1\\x9bcsi"),
    ("x" * 400, "x" * 300 + "..."),
], ids=["plain", "esc", "bel", "newline", "c1-csi", "long"])
def test_escape_text(text: str, shown: str) -> None:
    assert escape_text(text) == shown


def test_json_module_really_recurses() -> None:
    # The reason for all this: the plain parser dies on the bomb.
    with pytest.raises(RecursionError):
        json.loads(BOMB)
