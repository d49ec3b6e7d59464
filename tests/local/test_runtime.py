"""The image's runtime config in out/<name>.json: fields as written, the user resolved
through the image's own /etc/passwd and /etc/group (parsing tables, then end to end)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import BadImage
from pipeline.oci.runtime import UserIds, parse_runtime, resolve_user
from tests.harness.doitrun import run_doit
from tests.harness.images import dir, file, make_image, make_layer, symlink
from tests.harness.push import push
from tests.harness.registry import Registry

PASSWD = "root:x:0:0:root:/root:/bin/sh\n# comment\napp:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nstaff:x:50:app\napps:x:1001:\n"

USERS = {
    "empty-is-root": ("", UserIds(0, 0)),
    "name": ("app", UserIds(1000, 1001)),
    "name-and-group-name": ("app:staff", UserIds(1000, 50)),
    "name-and-gid": ("app:7", UserIds(1000, 7)),
    "uid-with-entry": ("1000", UserIds(1000, 1001)),
    "uid-without-entry": ("4242", UserIds(4242, 0)),
    "uid-and-gid": ("4242:4343", UserIds(4242, 4343)),
    "unknown-name": ("nobody", None),
    "unknown-group": ("app:nogroup", None),
    "uid-out-of-range": ("99999999999", None),
}


@pytest.mark.parametrize("case", sorted(USERS))
def test_users_resolve_like_runc(case: str) -> None:
    user, expected = USERS[case]
    assert resolve_user(user, PASSWD, GROUP) == expected


def test_a_config_field_of_the_wrong_type_is_named() -> None:
    with pytest.raises(BadImage) as caught:
        parse_runtime(b'{"config": {"Cmd": "sh -c true"}}', where="image 'x'")
    assert str(caught.value) == ("image 'x': config.Cmd must be a list of strings, got "
                                 "'sh -c true'")


CONTAINER = {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["PATH=/bin", "A=b"],
             "WorkingDir": "/srv", "User": "app:staff", "ExposedPorts": {"8080/tcp": {}},
             "Labels": {"org.example": "yes"}, "StopSignal": "SIGTERM"}


@pytest.mark.slow
def test_out_json_holds_the_runtime_config_with_the_user_resolved_through_passwd(
        registry: Registry, repo: str, tmp_path: Path) -> None:
    layer = make_layer([dir("etc"), file("etc/passwd", PASSWD.encode()),
                        file("etc/group", GROUP.encode()), dir("srv")])
    push(registry, repo, "v1", make_image([layer], container_config=CONTAINER))
    # A second image whose passwd is a link out of the tree: never followed.
    linked = make_layer([dir("etc"), symlink("etc/passwd", "/etc/passwd")])
    push(registry, repo, "linked", make_image([linked], container_config={"User": "root"}))
    project = tmp_path / "project"
    project.mkdir()
    (project / "images.toml").write_text(
        f'[images.app]\nref = "{registry.host}/{repo}:v1"\n'
        f'[images.plain]\nref = "{registry.host}/{repo}:v1"\n'
        'config_path = "/etc/rootfs/config.json"\n'
        f'[images.linked]\nref = "{registry.host}/{repo}:linked"\n')
    run_doit(project).check()
    record = json.loads((project / "out/app.json").read_text())
    assert record["runtime"] == {
        "entrypoint": ["/bin/app"], "cmd": ["--serve"], "env": ["PATH=/bin", "A=b"],
        "working_dir": "/srv", "user": "app:staff", "uid": 1000, "gid": 50,
        "exposed_ports": ["8080/tcp"], "labels": {"org.example": "yes"},
        "stop_signal": "SIGTERM"}
    linked_record = json.loads((project / "out/linked.json").read_text())
    assert (linked_record["runtime"]["uid"], linked_record["runtime"]["gid"]) == (None, None)

    # config_path: the same object as a root-owned 0644 file in the image; /etc keeps its
    # metadata, the new /etc/rootfs is a plain root directory; the option keys the image.
    image = str(project / "out/plain.ext4")
    assert json.loads(debugfs(image, "cat /etc/rootfs/config.json")) == record["runtime"]
    stat = debugfs(image, "stat /etc/rootfs/config.json")
    assert re.search(r"Mode:\s+0644", stat) and re.search(r"User:\s+0\s+Group:\s+0", stat)
    assert re.search(r"Mode:\s+0755", debugfs(image, "stat /etc/rootfs"))
    plain = json.loads((project / "out/plain.json").read_text())
    assert plain["chain"] != record["chain"] and plain["runtime"] == record["runtime"]
    assert run_doit(project).check().ran == []


def debugfs(image: str, command: str) -> str:
    done = subprocess.run(["debugfs", "-R", command, image], capture_output=True, text=True,
                          check=True)
    return done.stdout


BAD_PATHS = {
    "relative": ("etc/config.json", "must be an absolute path"),
    "dot-dot": ("/etc/../../x", "must be normalised"),
    "trailing-slash": ("/etc/rootfs/", "must be normalised"),
    "root": ("/", "must be normalised"),
    "control": ("/etc/\x1b[2Jx", "holds a control character"),
}


@pytest.mark.parametrize("case", sorted(BAD_PATHS))
def test_a_bad_config_path_is_refused_in_images_toml(case: str, tmp_path: Path) -> None:
    from pipeline.errors import ManifestError
    from pipeline.project.config import parse_manifest

    value, reason = BAD_PATHS[case]
    text = f'[images.a]\nref = "alpine:3.20"\nconfig_path = {json.dumps(value)}\n'
    with pytest.raises(ManifestError) as caught:
        parse_manifest(text, tmp_path / "images.toml")
    assert reason in str(caught.value) and "config_path" in str(caught.value)
    assert "\x1b" not in str(caught.value)


def test_local_references_are_accepted_in_images_toml(tmp_path: Path) -> None:
    from pipeline.oci.localref import LocalRef
    from pipeline.project.config import parse_manifest

    text = '[images.a]\nref = "oci-archive:build/app.tar:v1"\n'
    spec = parse_manifest(text, tmp_path / "images.toml").images[0]
    assert spec.ref == LocalRef("oci-archive", "build/app.tar", "v1")
    assert spec.ref.location(tmp_path) == tmp_path / "build/app.tar"


def test_a_deeply_nested_config_is_one_clear_error() -> None:
    with pytest.raises(BadImage) as err:
        parse_runtime(b"[" * 100_000, where="cfg")
    assert str(err.value).startswith("cfg: image config is not UTF-8 JSON (")
    assert "nested more than 64 levels deep" in str(err.value)
