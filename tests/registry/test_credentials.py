"""Docker config.json lookup and credential helpers (real helper scripts on PATH)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from pipeline.errors import AuthError
from pipeline.registry.credentials import (
    DOCKER_HUB_SERVER,
    Credential,
    DockerConfig,
    NoCredentials,
    load_credentials,
)
from tests.harness.dockerconfig import DockerConfig as ConfigFixture

SECRET = "s3cr3t-value"


def load() -> DockerConfig:
    return DockerConfig.load()


def test_missing_file_is_anonymous(tmp_path: Path) -> None:
    config = DockerConfig.load({"DOCKER_CONFIG": str(tmp_path / "nowhere")})
    assert config.get("ghcr.io") is None


def test_home_fallback(tmp_path: Path) -> None:
    (tmp_path / ".docker").mkdir()
    raw = base64.b64encode(b"u:p").decode()
    (tmp_path / ".docker" / "config.json").write_text(
        json.dumps({"auths": {"ghcr.io": {"auth": raw}}}))
    assert DockerConfig.load({"HOME": str(tmp_path)}).get("ghcr.io") == Credential("u", "p")


# (id, auths key as written by some tool, registry asked for)
AUTH_KEYS = [
    ("bare-host", "r.example:5000", "r.example:5000"),
    ("https-url", "https://r.example:5000", "r.example:5000"),
    ("http-url-with-path", "http://r.example:5000/v2/", "r.example:5000"),
    ("hub-key-for-docker-io", DOCKER_HUB_SERVER, "docker.io"),
    ("hub-key-for-api-host", DOCKER_HUB_SERVER, "registry-1.docker.io"),
    ("hub-bare-index-key", "index.docker.io", "docker.io"),
    ("hub-docker-io-key", "docker.io", "docker.io"),
]


@pytest.mark.parametrize("key, registry", [k[1:] for k in AUTH_KEYS],
                         ids=[k[0] for k in AUTH_KEYS])
def test_auths_keys(docker_config: ConfigFixture, key: str, registry: str) -> None:
    docker_config.add_auth(key, "alice", SECRET)
    assert load().get(registry) == Credential("alice", SECRET)


def test_auths_other_host_not_used(docker_config: ConfigFixture) -> None:
    docker_config.add_auth("r.example:5000", "alice", SECRET)
    config = load()
    assert config.get("r.example") is None
    assert config.get("r.example:5001") is None
    assert config.get("docker.io") is None


def test_username_password_fields(docker_config: ConfigFixture) -> None:
    docker_config.add_raw_auth("r.example", {"username": "bob", "password": SECRET})
    assert load().get("r.example") == Credential("bob", SECRET)


def test_identity_token(docker_config: ConfigFixture) -> None:
    docker_config.add_identity_token("r.example", "idt-123", username="alice")
    assert load().get("r.example") == Credential("alice", identity_token="idt-123")


@pytest.mark.parametrize("entry", [
    {"auth": "!!!not-base64"},
    {"auth": base64.b64encode(b"no-colon").decode()},
    {"auth": base64.b64encode(b"\xff\xfe:x").decode()},
], ids=["not-base64", "no-colon", "not-utf8"])
def test_bad_auth_entry(docker_config: ConfigFixture, entry: dict[str, str]) -> None:
    docker_config.add_raw_auth("r.example", entry)
    with pytest.raises(AuthError) as info:
        load().get("r.example")
    assert str(info.value) == (f"{docker_config.path}: auths entry for r.example has an 'auth'"
                               " value that is not base64 of 'user:password'; run `docker"
                               " login` or `podman login` again")


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON (Expecting property name enclosed in double quotes: line 1"
     " column 2 (char 1)); fix or remove it"),
    ("[]", "expected a JSON object"),
], ids=["not-json", "not-object"])
def test_bad_config_file(docker_config: ConfigFixture, text: str, message: str) -> None:
    docker_config.write_raw(text)
    with pytest.raises(AuthError) as info:
        load()
    assert str(info.value) == f"{docker_config.path}: {message}"


def test_cred_helper_for_host_wins(docker_config: ConfigFixture) -> None:
    helper = docker_config.helper("acme", {"r.example": ("helper-user", SECRET)})
    docker_config.set_cred_helper("r.example", "acme")
    docker_config.add_auth("r.example", "file-user", "file-pass")
    config = load()
    assert config.get("r.example") == Credential("helper-user", SECRET)
    assert config.get("r.example") == Credential("helper-user", SECRET)  # cached
    assert [(c.action, c.input) for c in helper.calls()] == [("get", "r.example")]


def test_creds_store_then_auths_order(docker_config: ConfigFixture) -> None:
    store = docker_config.helper("store", {"r.example": ("store-user", SECRET)})
    docker_config.set_creds_store("store")
    docker_config.add_auth("other.example", "file-user", "file-pass")
    config = load()
    assert config.get("r.example") == Credential("store-user", SECRET)
    # A configured store's "not found" is final: anonymous, not the auths entry.
    assert config.get("other.example") is None
    assert [c.input for c in store.calls()] == ["r.example", "other.example"]


def test_hub_helper_gets_hub_server_url(docker_config: ConfigFixture) -> None:
    helper = docker_config.helper("hub", {DOCKER_HUB_SERVER: ("hubuser", SECRET)})
    docker_config.set_cred_helper(DOCKER_HUB_SERVER, "hub")
    assert load().get("registry-1.docker.io") == Credential("hubuser", SECRET)
    assert [c.input for c in helper.calls()] == [DOCKER_HUB_SERVER]


def test_helper_identity_token(docker_config: ConfigFixture) -> None:
    docker_config.helper("tok", {"r.example": ("<token>", "idt-xyz")})
    docker_config.set_cred_helper("r.example", "tok")
    assert load().get("r.example") == Credential(identity_token="idt-xyz")


def test_helper_not_found_is_anonymous(docker_config: ConfigFixture) -> None:
    docker_config.helper("empty", {})
    docker_config.set_cred_helper("r.example", "empty")
    assert load().get("r.example") is None


def test_missing_helper_program(docker_config: ConfigFixture) -> None:
    docker_config.set_cred_helper("r.example", "nonexistent-zz")
    with pytest.raises(AuthError) as info:
        load().get("r.example")
    assert str(info.value) == (
        "credential helper docker-credential-nonexistent-zz for r.example is not installed"
        f" (named in {docker_config.path}); install it or remove it from the config")


def write_helper(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / f"docker-credential-{name}"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def test_failing_helper_message_has_no_secret(docker_config: ConfigFixture) -> None:
    write_helper(docker_config.bin_dir, "broken",
                 f'echo \'{{"Secret": "{SECRET}"}}\'\necho "keychain locked" >&2\nexit 3\n')
    docker_config.set_cred_helper("r.example", "broken")
    with pytest.raises(AuthError) as info:
        load().get("r.example")
    assert str(info.value) == ("credential helper docker-credential-broken failed for r.example"
                               " (exit status 3): keychain locked")


def test_failing_helper_json_output_is_not_echoed(docker_config: ConfigFixture) -> None:
    write_helper(docker_config.bin_dir, "leaky", f'echo \'{{"Secret": "{SECRET}"}}\'\nexit 1\n')
    docker_config.set_cred_helper("r.example", "leaky")
    with pytest.raises(AuthError) as info:
        load().get("r.example")
    assert SECRET not in str(info.value)
    assert str(info.value).endswith("(exit status 1): no message")


def test_helper_garbage_answer(docker_config: ConfigFixture) -> None:
    write_helper(docker_config.bin_dir, "garbage", "echo not-json\n")
    docker_config.set_cred_helper("r.example", "garbage")
    with pytest.raises(AuthError, match="something that is not a JSON object"):
        load().get("r.example")


def test_helper_timeout(docker_config: ConfigFixture) -> None:
    write_helper(docker_config.bin_dir, "slow", "exec sleep 5\n")
    docker_config.set_cred_helper("r.example", "slow")
    config = DockerConfig({"credHelpers": {"r.example": "slow"}}, timeout_s=0.3)
    with pytest.raises(AuthError) as info:
        config.get("r.example")
    assert str(info.value) == ("credential helper docker-credential-slow did not answer for"
                               " r.example within 0.3 s; is it waiting for a prompt?")


def test_repr_masks_secrets() -> None:
    assert repr(Credential("alice", SECRET)) == "Credential(username='alice', password='***')"
    assert SECRET not in repr(Credential(identity_token=SECRET))
    assert SECRET not in str(Credential("a", SECRET))


def test_no_credentials() -> None:
    assert NoCredentials().get("docker.io") is None


# (id, files written as {place: user}, the user expected for r.example) — place is
# "auth-file" ($REGISTRY_AUTH_FILE), "runtime" (${XDG_RUNTIME_DIR}/containers/auth.json),
# "config" (~/.config/containers/auth.json), "docker" ($DOCKER_CONFIG/config.json).
AUTH_FILE_ORDER = [
    ("registry-auth-file-first", {"auth-file": "a", "runtime": "r", "docker": "d"}, "a"),
    ("podman-runtime-before-docker", {"runtime": "r", "config": "c", "docker": "d"}, "r"),
    ("user-config-before-docker", {"config": "c", "docker": "d"}, "c"),
    ("docker-alone", {"docker": "d"}, "d"),
    ("none", {}, None),
]


@pytest.mark.parametrize("files, expected", [c[1:] for c in AUTH_FILE_ORDER],
                         ids=[c[0] for c in AUTH_FILE_ORDER])
def test_auth_file_order(tmp_path: Path, files: dict[str, str], expected: str | None) -> None:
    places = {"auth-file": tmp_path / "custom.json",
              "runtime": tmp_path / "run/containers/auth.json",
              "config": tmp_path / "home/.config/containers/auth.json",
              "docker": tmp_path / "docker/config.json"}
    for place, user in files.items():
        places[place].parent.mkdir(parents=True, exist_ok=True)
        raw = base64.b64encode(f"{user}:{SECRET}".encode()).decode()
        # podman writes the same format as docker, keys as bare hosts.
        places[place].write_text(json.dumps({"auths": {"r.example": {"auth": raw}}}))
    env = {"HOME": str(tmp_path / "home"), "XDG_RUNTIME_DIR": str(tmp_path / "run"),
           "DOCKER_CONFIG": str(tmp_path / "docker")}
    if "auth-file" in files:
        env["REGISTRY_AUTH_FILE"] = str(places["auth-file"])
    found = load_credentials(env).get("r.example")
    assert (found.username if found else None) == expected


def test_auth_file_broken_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "auth.json").write_text("{not json")
    with pytest.raises(AuthError, match=f"^{tmp_path}/auth.json: not valid JSON"):
        load_credentials({"HOME": str(tmp_path), "REGISTRY_AUTH_FILE": str(tmp_path / "auth.json")})
