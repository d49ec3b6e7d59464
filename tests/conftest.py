"""Shared fixtures: real registries (no auth, Basic, token), fault proxies, docker config.

Registries are session-scoped (one process each for the whole run); tests keep
out of each other's way by pushing to the unique repository name the ``repo``
fixture gives them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.registry import Registry, start_registry


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry with no auth on a free 127.0.0.1 port."""
    with start_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test, valid under the distribution name grammar."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:150] or "t"
    return f"test/{name}"
