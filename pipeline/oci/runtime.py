"""What the container would have run: the runtime part of an image config (no I/O).

``parse_runtime`` reads the ``config`` object of an image config (image-spec
config.md, "Properties": Entrypoint, Cmd, Env, WorkingDir, User,
ExposedPorts, Labels, StopSignal); ``resolve_user`` turns the ``User`` field
into numeric ids through the image's own ``/etc/passwd`` and ``/etc/group``
the way runc and Docker do (``user``, ``uid``, ``user:group``, ``uid:gid``;
a user's primary group from passwd when no group is given; a numeric id
needs no entry). ``RuntimeConfig.to_json`` is what ``out/<name>.json`` and
the optional in-image file (``config_path``) hold.

What it refuses to trust: the config (already size-capped and duplicate-key
free when it was resolved) is type-checked field by field, and a field of
the wrong type is a BadImage naming it; passwd and group lines are split,
never evaluated, and ids must be decimal integers in range.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.base.jsontext import loads_bounded
from pipeline.errors import BadImage

__all__ = ["RuntimeConfig", "UserIds", "parse_runtime", "resolve_user", "render_runtime",
           "ID_MAX"]

# Linux uid_t/gid_t are 32-bit; (uid_t)-1 means "no change" to the kernel.
ID_MAX = 2**32 - 2


@dataclass(frozen=True, slots=True)
class UserIds:
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    entrypoint: tuple[str, ...] | None
    cmd: tuple[str, ...] | None
    env: tuple[str, ...]
    working_dir: str
    user: str
    exposed_ports: tuple[str, ...]
    labels: tuple[tuple[str, str], ...]
    stop_signal: str | None

    def to_json(self, ids: UserIds | None) -> dict[str, Any]:
        """Sorted keys, lists as written; ``uid``/``gid`` null when the user did not resolve."""
        return {"cmd": None if self.cmd is None else list(self.cmd),
                "entrypoint": None if self.entrypoint is None else list(self.entrypoint),
                "env": list(self.env), "exposed_ports": list(self.exposed_ports),
                "gid": None if ids is None else ids.gid, "labels": dict(self.labels),
                "stop_signal": self.stop_signal, "uid": None if ids is None else ids.uid,
                "user": self.user, "working_dir": self.working_dir}



def _strings(value: Any, key: str, *, where: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadImage(f"{where}: config.{key} must be a list of strings, got {value!r:.80}")
    return tuple(value)


def _text(value: Any, key: str, *, where: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise BadImage(f"{where}: config.{key} must be a string, got {value!r:.80}")


def parse_runtime(body: bytes, *, where: str) -> RuntimeConfig:
    """The runtime fields of an image config (absent fields are empty, as Docker reads them)."""
    try:
        doc = loads_bounded(body.decode("utf-8"))
    except ValueError as err:
        raise BadImage(f"{where}: image config is not UTF-8 JSON ({err})") from None
    config = doc.get("config") if isinstance(doc, dict) else None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise BadImage(f"{where}: the image config's 'config' must be an object")
    ports = config.get("ExposedPorts") or {}
    labels = config.get("Labels") or {}
    if not isinstance(ports, dict):
        raise BadImage(f"{where}: config.ExposedPorts must be an object")
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise BadImage(f"{where}: config.Labels must map strings to strings")
    return RuntimeConfig(
        entrypoint=_strings(config.get("Entrypoint"), "Entrypoint", where=where),
        cmd=_strings(config.get("Cmd"), "Cmd", where=where),
        env=_strings(config.get("Env"), "Env", where=where) or (),
        working_dir=_text(config.get("WorkingDir"), "WorkingDir", where=where) or "",
        user=_text(config.get("User"), "User", where=where) or "",
        exposed_ports=tuple(sorted(ports)), labels=tuple(sorted(labels.items())),
        stop_signal=_text(config.get("StopSignal"), "StopSignal", where=where))


def _number(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        value = int(text)
        return value if value <= ID_MAX else None
    return None


def _table(text: str) -> list[list[str]]:
    """``name:x:id:...`` lines; comments, blank and short lines skipped."""
    rows = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            fields = line.split(":")
            if len(fields) >= 3:
                rows.append(fields)
    return rows


def resolve_user(user: str, passwd: str | None, group: str | None) -> UserIds | None:
    """``User`` as numeric ids through the image's passwd and group; None if it names
    a user or group the image does not have (runc would refuse to start it)."""
    name, _, group_name = user.partition(":")
    uid: int | None
    gid: int | None = None
    if not name:
        uid, gid = 0, 0  # Docker's default: root
    elif (uid := _number(name)) is not None:
        pass
    else:
        found = next((row for row in _table(passwd or "") if row[0] == name), None)
        if found is None or len(found) < 4:
            return None
        uid, gid = _number(found[2]), _number(found[3])
        if uid is None:
            return None
    if gid is None:
        # A numeric user takes its passwd entry's group when it has one, else 0.
        row = next((r for r in _table(passwd or "") if len(r) >= 4 and _number(r[2]) == uid),
                   None)
        gid = _number(row[3]) if row is not None else 0
    if group_name:
        gid = _number(group_name)
        if gid is None:
            entry = next((r for r in _table(group or "") if r[0] == group_name), None)
            gid = _number(entry[2]) if entry is not None else None
    return None if gid is None else UserIds(uid, gid)


def render_runtime(runtime: Mapping[str, Any]) -> bytes:
    """The in-image file (``config_path``): ``to_json``'s object, indented, final newline."""
    return (json.dumps(runtime, indent=2, sort_keys=True, ensure_ascii=False)
            + "\n").encode("utf-8")
