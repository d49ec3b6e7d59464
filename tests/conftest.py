"""Shared fixtures: real registries (no auth, Basic, token), fault proxies, docker config.

Registries are session-scoped (one process each for the whole run); tests keep
out of each other's way by pushing to the unique repository name the ``repo``
fixture gives them, and a test that damages stored blobs takes a
``private_registry`` of its own. See tests/harness/README.md for the API.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.registry.client import RegistryClient
from tests.harness.clients import Sleeps, make_client
from tests.harness.dockerconfig import DockerConfig
from tests.harness.faultproxy import FaultProxy
from tests.harness.registry import Registry, start_registry
from tests.harness.tokenserver import TokenServer

REGISTRY_LOG_TAIL = 4000
"""Characters of registry log shown with a failed test: the last few requests."""
USERS = {"alice": "wonderland", "bob": "builder"}
"""Accounts on the Basic and token registries; alice (first by name) pushes."""


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry with no auth on a free 127.0.0.1 port; at the end of the session,
    every blob it stores must still hash to its digest (see ``private_registry``)."""
    with start_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg
        damaged = damaged_blobs(reg)
        assert not damaged, (f"blobs of the shared registry were damaged on disk: {damaged};"
                             " a test that damages stored blobs takes private_registry")


def damaged_blobs(registry: Registry) -> list[str]:
    """Digests of the blobs in ``registry``'s storage whose bytes hash to something else."""
    return sorted(f"sha256:{data.parent.name}" for data in registry.blobs.glob("*/*/data")
                  if hashlib.sha256(data.read_bytes()).hexdigest() != data.parent.name)


@pytest.fixture
def private_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry of this test's own, for tests that damage its storage on disk.

    A registry keeps one copy of each blob for all its repositories: a chunk
    flipped or deleted under one test's repository is flipped or missing in
    every other test's repository that holds the same bytes (the session
    registry's next pushes of that digest only link to the damaged copy).
    """
    with start_registry(tmp_path_factory.mktemp("private-registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def basic_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """docker-registry with ``auth: htpasswd:`` (users alice/wonderland, bob/builder)."""
    with start_registry(tmp_path_factory.mktemp("basic-registry"), auth="htpasswd",
                        users=USERS) as reg:
        yield reg


@pytest.fixture(scope="session")
def _token_server_session() -> Iterator[TokenServer]:
    with TokenServer(users=USERS) as server:
        yield server


@pytest.fixture(scope="session")
def token_registry(tmp_path_factory: pytest.TempPathFactory,
                   _token_server_session: TokenServer) -> Iterator[Registry]:
    """docker-registry with ``auth: token:`` backed by the session's TokenServer
    (``token_registry.token_server``); anonymous pull outside ``private/``."""
    with start_registry(tmp_path_factory.mktemp("token-registry"), auth="token",
                        token_server=_token_server_session) as reg:
        yield reg


@pytest.fixture
def token_server(token_registry: Registry) -> Iterator[TokenServer]:
    """The token registry's TokenServer, with knobs and log reset before and after
    the test (call ``.reset()`` yourself after pushing to start a clean log)."""
    server = token_registry.token_server
    assert server is not None
    server.reset()
    yield server
    server.reset()


@pytest.fixture
def repo(request: pytest.FixtureRequest) -> str:
    """A repository name unique to this test (module and test name, parameters included),
    valid under the distribution name grammar: ``test/<module>-<test>``."""
    module = request.node.module.__name__.rpartition(".")[2]
    raw = f"{module}-{request.node.name}".lower()
    name = re.sub(r"[^a-z0-9]+", "-", raw).strip("-")[:180] or "t"
    return f"test/{name}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On failure, attach the tail of each registry's log that the test used."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when != "call" or not report.failed:
        return
    for name, value in getattr(item, "funcargs", {}).items():
        if isinstance(value, Registry):
            report.sections.append((f"{name} log (tail)", value.log_text()[-REGISTRY_LOG_TAIL:]))


@pytest.fixture
def fault_proxy(registry: Registry) -> Iterator[Callable[..., FaultProxy]]:
    """Factory: ``fault_proxy()`` starts a FaultProxy in front of ``registry``;
    ``fault_proxy(basic_registry)`` in front of another one. All stop at teardown."""
    started: list[FaultProxy] = []

    def make(upstream: Registry | None = None, *, redirect_host: str = "localhost") -> FaultProxy:
        proxy = FaultProxy(upstream or registry, redirect_host=redirect_host).start()
        started.append(proxy)
        return proxy

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def docker_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DockerConfig:
    """An empty ``$DOCKER_CONFIG/config.json`` (env monkeypatched) plus a bin dir
    prepended to PATH for ``docker-credential-*`` helpers made with ``.helper()``."""
    config = DockerConfig(tmp_path / "docker-config", tmp_path / "docker-bin")
    monkeypatch.setenv("DOCKER_CONFIG", str(config.dir))
    # The containers auth files are asked first; none of the host's may answer.
    monkeypatch.delenv("REGISTRY_AUTH_FILE", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg-runtime"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PATH", f"{config.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return config


@pytest.fixture
def sleeps() -> Sleeps:
    """The delays the ``client`` fixture's retries asked for (nothing really sleeps)."""
    return Sleeps()


@pytest.fixture
def client(sleeps: Sleeps) -> Iterator[RegistryClient]:
    """An anonymous registry client whose retries record into ``sleeps``."""
    with make_client(sleeps) as c:
        yield c


@pytest.fixture
def proxy(fault_proxy: Callable[..., FaultProxy]) -> FaultProxy:
    """A fault-injecting proxy in front of the plain registry."""
    return fault_proxy()
