"""A throwaway ``$DOCKER_CONFIG`` and ``docker-credential-<name>`` helper scripts.

:class:`DockerConfig` writes ``config.json`` with ``auths`` (base64 ``auth``,
``identitytoken``), ``credsStore`` and ``credHelpers``. :meth:`DockerConfig.helper`
writes a credential helper speaking Docker's protocol (docker-credential-helpers):
``get`` reads the server URL on stdin and prints
``{"ServerURL","Username","Secret"}`` (Username ``<token>`` means the Secret is
an identity token); an unknown server prints
``credentials not found in native keychain`` on stdout and exits 1. Every
invocation is appended to a log the test can read back.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DockerConfig", "CredentialHelper", "HelperCall", "DOCKER_HUB_KEY", "NOT_FOUND"]

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
"""The ``auths``/helper key Docker uses for Docker Hub."""
NOT_FOUND = "credentials not found in native keychain"
IDENTITY_TOKEN_USER = "<token>"

_SCRIPT = '''#!{python} -IS
import json, sys
action = sys.argv[1] if len(sys.argv) > 1 else ""
data = sys.stdin.read()
with open({log!r}, "a") as log:
    log.write(json.dumps({{"action": action, "input": data}}) + "\\n")
with open({table!r}) as f:
    table = json.load(f)
if action == "get":
    server = data.strip()
    if server not in table:
        sys.stdout.write({not_found!r} + "\\n")
        sys.exit(1)
    user, secret = table[server]
    json.dump({{"ServerURL": server, "Username": user, "Secret": secret}}, sys.stdout)
elif action == "list":
    json.dump({{k: v[0] for k, v in table.items()}}, sys.stdout)
else:
    sys.stdout.write("unsupported action: " + action + "\\n")
    sys.exit(1)
'''


@dataclass(frozen=True, slots=True)
class HelperCall:
    """One run of a helper: its argv[1] and what it read on stdin."""

    action: str
    input: str


class CredentialHelper:
    """``docker-credential-<name>`` on the fixture's PATH, answering from a table."""

    def __init__(self, bin_dir: Path, name: str, table: Mapping[str, tuple[str, str]]) -> None:
        self.name = name
        self.path = bin_dir / f"docker-credential-{name}"
        self.table_path = bin_dir / f".{name}.table.json"
        self.log_path = bin_dir / f".{name}.log"
        self.set_table(table)
        self.path.write_text(_SCRIPT.format(python=sys.executable, log=str(self.log_path),
                                            table=str(self.table_path), not_found=NOT_FOUND))
        self.path.chmod(0o755)

    def set_table(self, table: Mapping[str, tuple[str, str]]) -> None:
        """Replace the answers: server URL -> (Username, Secret)."""
        self.table_path.write_text(json.dumps({k: list(v) for k, v in table.items()}))

    def calls(self) -> list[HelperCall]:
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        return [HelperCall(**json.loads(line)) for line in lines]


class DockerConfig:
    """``config.json`` in a temporary ``$DOCKER_CONFIG``; each change rewrites the file."""

    def __init__(self, directory: Path, bin_dir: Path) -> None:
        self.dir = directory
        self.bin_dir = bin_dir
        self.path = directory / "config.json"
        self.data: dict[str, object] = {}
        directory.mkdir(parents=True, exist_ok=True)
        bin_dir.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=1, sort_keys=True))

    def _auths(self) -> dict[str, dict[str, str]]:
        return self.data.setdefault("auths", {})  # type: ignore[return-value]

    def add_auth(self, server: str, username: str, password: str) -> None:
        """``auths[server].auth = base64(username:password)``."""
        raw = f"{username}:{password}".encode()
        self._auths()[server] = {"auth": base64.b64encode(raw).decode()}
        self.save()

    def add_identity_token(self, server: str, token: str, *, username: str = "") -> None:
        """``auths[server]`` as `docker login` stores a token: ``auth`` holds
        ``username:`` with no password, ``identitytoken`` the refresh token."""
        raw = f"{username}:".encode()
        self._auths()[server] = {"auth": base64.b64encode(raw).decode(), "identitytoken": token}
        self.save()

    def add_raw_auth(self, server: str, entry: Mapping[str, object]) -> None:
        """Any ``auths`` entry verbatim (malformed base64, missing colon...)."""
        self._auths()[server] = dict(entry)  # type: ignore[assignment]
        self.save()

    def set_creds_store(self, name: str | None) -> None:
        if name is None:
            self.data.pop("credsStore", None)
        else:
            self.data["credsStore"] = name
        self.save()

    def set_cred_helper(self, server: str, name: str) -> None:
        helpers = self.data.setdefault("credHelpers", {})
        helpers[server] = name  # type: ignore[index]
        self.save()

    def write_raw(self, text: str) -> None:
        """Replace config.json with arbitrary text (invalid JSON, wrong types)."""
        self.path.write_text(text)

    def helper(self, name: str, table: Mapping[str, tuple[str, str]]) -> CredentialHelper:
        """Create ``docker-credential-<name>`` on PATH answering from ``table``
        (server -> (Username, Secret); Username ``<token>`` = identity token)."""
        return CredentialHelper(self.bin_dir, name, table)

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that should see this config and its helpers."""
        return {**os.environ, "DOCKER_CONFIG": str(self.dir),
                "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
