"""Run Debian's real ``docker-registry`` (distribution 2.8) on a loopback port.

Each registry gets its own temporary config, storage directory and log file,
listens on a free ``127.0.0.1`` port, and is stopped (terminate, then kill) when
its context ends. Three auth variants exist, as in production: none,
``auth: htpasswd:`` (Basic, bcrypt only) and ``auth: token:`` (Bearer JWTs from
:class:`~tests.harness.tokenserver.TokenServer`).

Nothing here trusts the registry to come up: start-up waits for ``GET /v2/``
to answer 200 or 401 and fails with the registry's own log otherwise.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import httpx

from .httpauth import BearerAuth

if TYPE_CHECKING:
    from .tokenserver import TokenServer

__all__ = ["Registry", "start_registry", "free_port", "REGISTRY_BINARY"]

REGISTRY_BINARY = "/usr/bin/docker-registry"
# The registry starts in well under a second; 15 s covers a loaded 2-core CI box.
STARTUP_TIMEOUT_S = 15.0
# Grace period for a clean shutdown before SIGKILL.
STOP_TIMEOUT_S = 5.0
# Binding port 0 then releasing it can race with another process; retry a few times.
PORT_ATTEMPTS = 5

AuthKind = Literal["none", "htpasswd", "token"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True, eq=False)
class Registry:
    """A running registry: where it listens and how to authenticate to it."""

    host: str
    """``127.0.0.1:PORT``: the registry part of an image reference."""
    url: str
    """``http://127.0.0.1:PORT``."""
    auth_kind: AuthKind
    root: Path
    """Temporary directory holding config.yml, storage/ and registry.log."""
    username: str | None = None
    password: str | None = None
    token_server: TokenServer | None = None
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def port(self) -> int:
        return int(self.host.rpartition(":")[2])

    @property
    def log_path(self) -> Path:
        return self.root / "registry.log"

    @property
    def storage(self) -> Path:
        return self.root / "storage"

    @property
    def blobs(self) -> Path:
        """Where the filesystem driver keeps every sha256 blob, once for all repositories."""
        return self.storage / "docker/registry/v2/blobs/sha256"

    def blob_file(self, digest: str) -> Path:
        """The stored bytes of blob ``digest`` (``sha256:<hex>``)."""
        hexa = digest.split(":")[1]
        return self.blobs / hexa[:2] / hexa / "data"

    @property
    def auth(self) -> httpx.Auth | None:
        """An httpx.Auth holding the push-capable credentials (None without auth)."""
        if self.auth_kind == "htpasswd":
            assert self.username is not None and self.password is not None
            return httpx.BasicAuth(self.username, self.password)
        if self.auth_kind == "token":
            assert self.username is not None and self.password is not None
            return BearerAuth(self.username, self.password)
        return None

    def client(self, **kwargs: object) -> httpx.Client:
        """An httpx.Client on :attr:`url` authenticated with :attr:`auth`."""
        return httpx.Client(base_url=self.url, auth=self.auth, timeout=30.0,
                            **kwargs)  # type: ignore[arg-type]

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _htpasswd(users: Mapping[str, str]) -> str:
    import bcrypt  # test extra; distribution only accepts bcrypt entries

    lines = []
    for name, password in sorted(users.items()):
        # Cost 4 (the minimum) keeps start-up and every Basic check fast: the
        # registry runs bcrypt on each request.
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
        lines.append(f"{name}:{hashed}\n")
    return "".join(lines)


def _config(root: Path, port: int, auth: dict[str, object] | None) -> dict[str, object]:
    config: dict[str, object] = {
        "version": "0.1",
        "log": {"level": "info", "formatter": "text",
                "accesslog": {"disabled": False}},
        "storage": {
            "filesystem": {"rootdirectory": str(root / "storage")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False},
                            "readonly": {"enabled": False}},
        },
        "http": {
            "addr": f"127.0.0.1:{port}",
            # A fixed secret silences the "generated random secret" warning.
            "secret": "rootfs-pipeline-test-secret",
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
    }
    if auth is not None:
        config["auth"] = auth
    return config


def _wait_ready(reg: Registry, deadline: float) -> bool:
    """True once /v2/ answers 200 or 401; False if the process died first."""
    assert reg.process is not None
    while time.monotonic() < deadline:
        if reg.process.poll() is not None:
            return False
        try:
            r = httpx.get(f"{reg.url}/v2/", timeout=1.0)
            if r.status_code in (200, 401):
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def start_registry(
    root: Path,
    *,
    auth: AuthKind = "none",
    users: Mapping[str, str] | None = None,
    token_server: TokenServer | None = None,
) -> Iterator[Registry]:
    """Start a registry in the empty directory ``root``; stop it on exit.

    ``auth="htpasswd"`` needs ``users`` (name -> password; the first one sorted is
    the pushing user); ``auth="token"`` needs ``token_server``, whose first user
    becomes the pushing user.
    """
    root.mkdir(parents=True, exist_ok=True)
    (root / "storage").mkdir(exist_ok=True)
    username = password = None
    auth_cfg: dict[str, object] | None = None
    if auth == "htpasswd":
        if not users:
            raise ValueError("internal error: auth='htpasswd' needs users")
        (root / "htpasswd").write_text(_htpasswd(users))
        auth_cfg = {"htpasswd": {"realm": "basic-realm", "path": str(root / "htpasswd")}}
        username, password = sorted(users.items())[0]
    elif auth == "token":
        if token_server is None:
            raise ValueError("internal error: auth='token' needs a token_server")
        bundle = root / "token-root.pem"
        bundle.write_bytes(token_server.certificate_pem)
        auth_cfg = {"token": {"realm": token_server.realm, "service": token_server.service,
                              "issuer": token_server.issuer,
                              "rootcertbundle": str(bundle)}}
        username, password = token_server.default_user
    elif auth != "none":
        raise ValueError(f"internal error: unknown registry auth kind {auth!r}")

    reg: Registry | None = None
    for _ in range(PORT_ATTEMPTS):
        port = free_port()
        config_path = root / "config.yml"
        # JSON is valid YAML, and the registry's yaml.v2 reader accepts it.
        config_path.write_text(json.dumps(_config(root, port, auth_cfg), indent=1))
        reg = Registry(host=f"127.0.0.1:{port}", url=f"http://127.0.0.1:{port}",
                       auth_kind=auth, root=root, username=username, password=password,
                       token_server=token_server)
        with open(reg.log_path, "ab") as log:
            reg.process = subprocess.Popen(
                [REGISTRY_BINARY, "serve", str(config_path)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=root)
        if _wait_ready(reg, time.monotonic() + STARTUP_TIMEOUT_S):
            break
        reg.stop()
        if "address already in use" not in reg.log_text():
            raise RuntimeError(f"docker-registry did not come up on {reg.host}; "
                               f"its log:\n{reg.log_text()[-4000:]}")
    else:
        raise RuntimeError(f"docker-registry found no free port in {PORT_ATTEMPTS} tries")
    assert reg is not None
    try:
        yield reg
    finally:
        reg.stop()
