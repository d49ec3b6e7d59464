"""The image's runtime config in out/<name>.json: fields as written, the user resolved
through the image's own /etc/passwd and /etc/group (parsing tables, then end to end)."""

from __future__ import annotations

import json
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
