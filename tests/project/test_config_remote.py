"""[cache] remote/push, ROOTFS_REMOTE_CACHE*, and publish: values and exact errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ManifestError, PipelineError, SettingError
from pipeline.project.config import Manifest, parse_manifest

IMAGE = '[images.a]\nref = "alpine"\n'
CACHE = '[cache]\nremote = "cache.example.com:5000/team/rootfs-cache"\n'


def parse(text: str, environ: dict[str, str] | None = None) -> Manifest:
    return parse_manifest(text, Path("/proj/images.toml"), environ=environ)


def test_cache_and_publish_parse() -> None:
    m = parse(CACHE + "push = false\n" + IMAGE + 'publish = "reg.example.com/rootfs/a:v1"\n')
    assert m.remote is not None
    assert (m.remote.registry, m.remote.repository, m.remote.push) == (
        "cache.example.com:5000", "team/rootfs-cache", False)
    publish = m.images[0].publish
    assert publish is not None and str(publish) == "reg.example.com/rootfs/a:v1"
    assert parse(IMAGE).remote is None and parse(IMAGE).images[0].publish is None


@pytest.mark.parametrize("env, remote, push", [
    pytest.param({"ROOTFS_REMOTE_CACHE": "ci.example.com/c"}, "ci.example.com/c", True,
                 id="repository-from-env"),
    pytest.param({"ROOTFS_REMOTE_CACHE_PUSH": "0"}, "cache.example.com:5000/team/rootfs-cache",
                 False, id="read-only-from-env"),
    pytest.param({"ROOTFS_REMOTE_CACHE": ""}, None, None, id="off-from-env"),
    pytest.param({}, "cache.example.com:5000/team/rootfs-cache", True, id="file-alone"),
])
def test_environment_wins_over_the_file(env: dict[str, str], remote: str | None,
                                        push: bool | None) -> None:
    m = parse(CACHE + IMAGE, environ=env)
    assert (None if m.remote is None else str(m.remote)) == remote
    assert (None if m.remote is None else m.remote.push) == push


def test_environment_alone_sets_a_cache() -> None:
    m = parse(IMAGE, environ={"ROOTFS_REMOTE_CACHE": "127.0.0.1:5000/c",
                              "ROOTFS_REMOTE_CACHE_PUSH": "no"})
    assert m.remote is not None and str(m.remote) == "127.0.0.1:5000/c" and not m.remote.push


@pytest.mark.parametrize("text, message", [
    pytest.param('[cache]\nremote = "reg.example.com/c:v1"\n' + IMAGE,
                 "/proj/images.toml:2: bad `remote`: 'reg.example.com/c:v1' names a tag; give "
                 "the repository alone (the cache chooses its own tags, rk-<key>)", id="tag"),
    pytest.param('[cache]\nremote = "reg.example.com/c@sha256:' + "a" * 64 + '"\n' + IMAGE,
                 "/proj/images.toml:2: bad `remote`: 'reg.example.com/c@sha256:" + "a" * 64
                 + "' names a digest; give a repository such as "
                 "'registry.example.com/team/rootfs-cache'", id="digest"),
    pytest.param('[cache]\nremote = 5\n' + IMAGE,
                 "/proj/images.toml:2: `remote` must be a string such as "
                 "\"registry.example.com/team/cache\", got int 5", id="not-a-string"),
    pytest.param('[cache]\npush = true\n' + IMAGE,
                 "/proj/images.toml:2: `push` needs `remote`, the repository to push to, e.g. "
                 "remote = \"registry.example.com/team/rootfs-cache\"", id="push-alone"),
    pytest.param(CACHE + 'push = "yes"\n' + IMAGE,
                 "/proj/images.toml:3: `push` must be true or false, got str 'yes'",
                 id="push-not-a-boolean"),
    pytest.param(CACHE + 'pushh = true\n' + IMAGE,
                 "/proj/images.toml:3: unknown key 'pushh' (did you mean 'push'?); allowed: "
                 "push, remote", id="unknown-key"),
    pytest.param(IMAGE + 'publish = "reg.example.com/rootfs/a"\n',
                 "/proj/images.toml:3: image 'a': bad `publish` 'reg.example.com/rootfs/a': "
                 "'reg.example.com/rootfs/a' has no tag; write one, e.g. "
                 "'reg.example.com/rootfs/a:v1'", id="publish-without-tag"),
])
def test_bad_cache_settings(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as exc:
        parse(text)
    assert str(exc.value) == message


@pytest.mark.parametrize("env, kind, message", [
    pytest.param({"ROOTFS_REMOTE_CACHE": "reg.example.com/c:v1"}, ManifestError,
                 "environment variable ROOTFS_REMOTE_CACHE: 'reg.example.com/c:v1' names a tag;"
                 " give the repository alone (the cache chooses its own tags, rk-<key>)",
                 id="tag"),
    pytest.param({"ROOTFS_REMOTE_CACHE_PUSH": "2"}, SettingError,
                 "ROOTFS_REMOTE_CACHE_PUSH='2' is not valid: expected 0 (read only) or 1 "
                 "(push what is built)", id="push-2"),
])
def test_bad_environment_is_one_line(env: dict[str, str], kind: type[PipelineError],
                                     message: str) -> None:
    with pytest.raises(kind) as exc:
        parse(CACHE + IMAGE, environ=env)
    assert str(exc.value) == message
