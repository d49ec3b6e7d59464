"""A remote cache serving JSON nested deeper than Python can parse: a bad entry, not a crash."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.errors import RemoteArtifactError
from pipeline.remote.fetch import find_artifact


@dataclass
class _Answer:
    body: bytes
    digest: str = "sha256:" + "0" * 64


class _Registry:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def get_manifest(self, registry: str, repository: str, reference: str) -> _Answer:
        return _Answer(self.body)


def test_a_deeply_nested_manifest_is_a_bad_entry() -> None:
    with pytest.raises(RemoteArtifactError) as err:
        find_artifact(_Registry(b"[" * 1_000_000), "r.test", "cache", "rk-k")  # type: ignore[arg-type]
    assert "the manifest is not JSON" in str(err.value)
    assert "nested more than 64 levels deep" in str(err.value)
