"""Registry credentials from the files Docker and podman keep, and credential helpers.

Where they are looked for, first answer wins (``load_credentials``), as
containers-auth.json(5) orders them for podman, skopeo and buildah:
1. ``$REGISTRY_AUTH_FILE`` (when set);
2. ``${XDG_RUNTIME_DIR}/containers/auth.json`` (what ``podman login`` writes);
3. ``~/.config/containers/auth.json``;
4. ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json`` (``docker login``).
All four share Docker's format, so one parser reads them.

Lookup for a registry, as the docker CLI does it (cli/config/configfile):
1. ``credHelpers[<host>]``: run ``docker-credential-<name> get``;
2. else ``credsStore``: the same, with the default helper;
3. else ``auths``: ``auth`` (base64 ``user:password``), ``username``/``password``,
   or ``identitytoken``. Keys may be bare hosts or URLs
   (``https://index.docker.io/v1/`` for Docker Hub).
When a helper is configured its answer is final: "credentials not found"
means anonymous, any other failure is an error naming the helper.

The file is read at ``load()``; helpers run lazily, at most once per
registry per store, because a helper may be slow (keychains, cloud CLIs).
This module trusts the user's own config; it never logs or shows a secret,
and ``Credential.__repr__`` masks them.
"""

from __future__ import annotations

import base64
import binascii
import os
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from pipeline.base.jsontext import loads_bounded
from pipeline.errors import AuthError
from pipeline.oci.reference import DOCKER_HUB_ALIASES

__all__ = ["Credential", "CredentialSource", "CredentialChain", "DockerConfig", "NoCredentials",
           "DOCKER_HUB_SERVER", "HELPER_TIMEOUT_S", "LOGIN_HINT", "auth_file_paths",
           "load_credentials"]

log = structlog.get_logger(__name__)

# Docker Hub's key in config.json and the server name its helpers expect.
DOCKER_HUB_SERVER = "https://index.docker.io/v1/"
# Helpers may unlock a keychain or call a cloud CLI; past this they are stuck.
HELPER_TIMEOUT_S = 30.0
# A helper's answer is a small JSON object; anything bigger is not one.
HELPER_OUTPUT_MAX_BYTES = 1024 * 1024
# docker-credential-helpers' errCredentialsNotFoundMessage.
_NOT_FOUND = "credentials not found in native keychain"
_IDENTITY_TOKEN_USER = "<token>"
# Both tools write a file this module reads; hints name whichever the user has.
LOGIN_HINT = "`docker login` or `podman login`"


@dataclass(frozen=True, slots=True)
class Credential:
    """A username and password, or an identity (refresh) token; secrets never shown."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __repr__(self) -> str:
        kind = "identity_token" if self.identity_token else "password"
        return f"Credential(username={self.username!r}, {kind}='***')"


class CredentialSource(Protocol):
    def get(self, registry: str) -> Credential | None:
        """Credentials for a registry name (``docker.io``, ``host:port``) or None."""
        ...


class NoCredentials:
    """Anonymous access everywhere."""

    def get(self, registry: str) -> Credential | None:
        return None


def _hostname(key: str) -> str:
    """Docker's ConvertToHostname: drop a scheme and anything after the host."""
    for prefix in ("http://", "https://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return key.split("/", 1)[0]


def _is_hub(host: str) -> bool:
    return host in DOCKER_HUB_ALIASES


class DockerConfig:
    """A parsed ``config.json``; thread-safe ``get`` with a per-registry cache."""

    def __init__(self, data: Mapping[str, Any], *, path: Path | None = None,
                 timeout_s: float = HELPER_TIMEOUT_S) -> None:
        self.path = path
        self._where = str(path) if path else "docker config"
        self._timeout_s = timeout_s
        self._auths = self._mapping(data, "auths")
        self._helpers = self._mapping(data, "credHelpers")
        store = data.get("credsStore")
        if store is not None and not isinstance(store, str):
            raise AuthError(f"{self._where}: 'credsStore' must be a string")
        self._store = store or None
        self._cache: dict[str, Credential | None] = {}
        self._lock = threading.Lock()

    def _mapping(self, data: Mapping[str, Any], key: str) -> dict[str, Any]:
        value = data.get(key) or {}
        if not isinstance(value, dict):
            raise AuthError(f"{self._where}: {key!r} must be a JSON object")
        return value

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> DockerConfig:
        """Read ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``; missing is empty."""
        env = os.environ if env is None else env
        directory = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else (
            _home(env) / ".docker")
        return cls.read(directory / "config.json")

    @classmethod
    def read(cls, path: Path) -> DockerConfig:
        """One auth file in Docker's format (config.json, containers auth.json); missing is
        empty."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls({}, path=path)
        except OSError as err:
            raise AuthError(f"{path}: cannot read registry credentials ({err.strerror})") from None
        try:
            data = loads_bounded(text)
        except ValueError as err:
            raise AuthError(f"{path}: not valid JSON ({err}); fix or remove it") from None
        if not isinstance(data, dict):
            raise AuthError(f"{path}: expected a JSON object")
        return cls(data, path=path)

    @property
    def empty(self) -> bool:
        return not (self._auths or self._helpers or self._store)

    def get(self, registry: str) -> Credential | None:
        host = _hostname(registry)
        key = "docker.io" if _is_hub(host) else host
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        found = self._lookup(key)
        with self._lock:
            self._cache[key] = found
        return found

    def _lookup(self, host: str) -> Credential | None:
        hub = _is_hub(host)
        server = DOCKER_HUB_SERVER if hub else host
        candidates = [DOCKER_HUB_SERVER, *sorted(DOCKER_HUB_ALIASES)] if hub else [host]
        for name in candidates:
            helper = self._helpers.get(name)
            if helper:
                return self._run_helper(str(helper), server)
        if self._store:
            return self._run_helper(self._store, server)
        return self._from_auths(host)

    def _from_auths(self, host: str) -> Credential | None:
        entry = None
        exact = DOCKER_HUB_SERVER if _is_hub(host) and DOCKER_HUB_SERVER in self._auths else host
        if exact in self._auths:
            entry = self._auths[exact]
        else:
            for key, value in self._auths.items():
                other = _hostname(key)
                if other == host or (_is_hub(host) and _is_hub(other)):
                    entry = value
                    break
        if not isinstance(entry, dict):
            return None
        return self._decode_entry(entry, host)

    def _decode_entry(self, entry: Mapping[str, Any], host: str) -> Credential | None:
        token = entry.get("identitytoken")
        username, password = entry.get("username") or "", entry.get("password") or ""
        encoded = entry.get("auth")
        if encoded:
            try:
                username, sep, password = base64.b64decode(
                    str(encoded), validate=True).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                sep = ""
            if not sep:
                raise AuthError(f"{self._where}: auths entry for {host} has an 'auth' value that is"
                                f" not base64 of 'user:password'; run {LOGIN_HINT} again")
        if token:
            return Credential(username=str(username), identity_token=str(token))
        if username or password:
            return Credential(username=str(username), password=str(password))
        return None

    def _run_helper(self, name: str, server: str) -> Credential | None:
        program = f"docker-credential-{name}"
        try:
            done = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                                  timeout=self._timeout_s, check=False)
        except FileNotFoundError:
            raise AuthError(f"credential helper {program} for {server} is not installed (named in"
                            f" {self._where}); install it or remove it from the config") from None
        except subprocess.TimeoutExpired:
            raise AuthError(f"credential helper {program} did not answer for {server} within"
                            f" {self._timeout_s:g} s; is it waiting for a prompt?") from None
        stdout = done.stdout[:HELPER_OUTPUT_MAX_BYTES].decode("utf-8", "replace")
        if done.returncode != 0:
            if _NOT_FOUND in stdout or _NOT_FOUND in done.stderr.decode("utf-8", "replace"):
                log.debug("credentials.helper_not_found", helper=program, server=server)
                return None
            raise AuthError(f"credential helper {program} failed for {server} (exit status"
                            f" {done.returncode}): {_safe_tail(stdout, done.stderr)}")
        try:
            answer = loads_bounded(stdout)
            username, secret = answer.get("Username", ""), answer.get("Secret", "")
        except (ValueError, AttributeError):
            raise AuthError(f"credential helper {program} answered for {server} with something"
                            " that is not a JSON object") from None
        if not isinstance(username, str) or not isinstance(secret, str):
            raise AuthError(f"credential helper {program} answered for {server} with a"
                            " non-string Username or Secret")
        if username == _IDENTITY_TOKEN_USER:
            return Credential(identity_token=secret)
        if not username and not secret:
            return None
        return Credential(username=username, password=secret)


def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("HOME") or Path.home())


def auth_file_paths(env: Mapping[str, str] | None = None) -> list[Path]:
    """The auth files in the order they are asked (containers-auth.json(5), then Docker's)."""
    env = os.environ if env is None else env
    paths = []
    if env.get("REGISTRY_AUTH_FILE"):
        paths.append(Path(env["REGISTRY_AUTH_FILE"]))
    if env.get("XDG_RUNTIME_DIR"):
        paths.append(Path(env["XDG_RUNTIME_DIR"]) / "containers" / "auth.json")
    paths.append(_home(env) / ".config" / "containers" / "auth.json")
    directory = Path(env["DOCKER_CONFIG"]) if env.get("DOCKER_CONFIG") else (
        _home(env) / ".docker")
    paths.append(directory / "config.json")
    return paths


class CredentialChain:
    """Several auth files asked in order; the first that knows the registry answers."""

    def __init__(self, configs: list[DockerConfig]) -> None:
        self.configs = configs

    def get(self, registry: str) -> Credential | None:
        for config in self.configs:
            found = config.get(registry)
            if found is not None:
                return found
        return None


def load_credentials(env: Mapping[str, str] | None = None) -> CredentialChain:
    """Every auth file that exists, in ``auth_file_paths`` order; none is anonymous."""
    configs = [DockerConfig.read(path) for path in dict.fromkeys(auth_file_paths(env))]
    return CredentialChain([c for c in configs if not c.empty])


def _safe_tail(stdout: str, stderr: bytes) -> str:
    """The last line a failing helper printed, unless it looks like JSON (it may hold a secret)."""
    for text in (stderr.decode("utf-8", "replace"), stdout):
        lines = [line for line in text.strip().splitlines() if line.strip()]
        if lines and not lines[-1].lstrip().startswith(("{", "[")):
            return lines[-1][:200]
    return "no message"
