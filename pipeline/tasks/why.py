"""Why an image would be rebuilt, in words: what ``doit info mkfs:<image>`` shows.

doit prints a failing ``uptodate`` object with ``str()``; its own
``config_changed`` prints the whole config dict, which says nothing a user
can act on. ``ImageUpToDate`` is the mkfs task's one uptodate check (the
config doit saw last time, then the record beside the output and the output
itself) and, printed, lists the differences between the build record
``out/<name>.json`` (what the image was built from) and what it would be
built from now::

    size: auto -> 256 MiB; layer sha256:ab12cd34ef56 is new

The record is the memory here, not doit's database: it holds the whole
previous config, where doit keeps only a digest of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from doit.tools import config_changed

from pipeline.base.terminal import short_digest
from pipeline.base.units import format_size
from pipeline.project.buildrecord import describes, read_record

__all__ = ["ImageUpToDate", "rebuild_reasons", "short_digest"]


def _value(key: str, value: Any) -> str:
    if key == "size":
        return format_size(value).split(" (")[0] if isinstance(value, int) else str(value)
    if key == "headroom" and isinstance(value, Mapping):
        return f"{value.get('percent')} % or {format_size(int(value.get('bytes') or 0))}"
    if isinstance(value, list):
        return "[" + ", ".join(map(str, value)) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def _layers(resolved: Mapping[str, Any] | Any) -> list[str]:
    layers = resolved.get("layers") if isinstance(resolved, Mapping) else None
    return [str(x.get("digest")) for x in layers or () if isinstance(x, Mapping)]


def rebuild_reasons(record: Mapping[str, Any] | None, config: Mapping[str, Any],
                    output: Path, key: str) -> list[str]:
    """What differs between the record of the last build and ``config`` (the mkfs config),
    in words; empty when the record describes this very build of ``output``."""
    record_path = output.with_suffix(".json")
    if record is None:
        return [f"{output.name} was never built here ({record_path.name} is missing or"
                " unreadable)" if not output.exists() else
                f"{record_path.name} is missing or unreadable, so {output.name} is not trusted"]
    reasons = []
    if record.get("ref") != config["ref"]:
        reasons.append(f"ref: {record.get('ref')!r} -> {config['ref']!r}")
    old_options, new_options = record.get("options") or {}, config["options"]
    for name in sorted(set(old_options) | set(new_options)):
        if old_options.get(name) != new_options.get(name):
            reasons.append(f"{name}: {_value(name, old_options.get(name, 'unset'))} ->"
                           f" {_value(name, new_options.get(name, 'unset'))}")
    old_layers, new_layers = _layers(record.get("resolved")), _layers(config["resolved"])
    reasons += [f"layer {short_digest(d)} is new" for d in new_layers if d not in old_layers]
    reasons += [f"layer {short_digest(d)} is gone" for d in old_layers if d not in new_layers]
    if not reasons and old_layers != new_layers:
        reasons.append("the layers are in another order")
    # What else made the bytes: e2fsprogs (mkfs builder) or the native writer's format;
    # a change of builder already says both changed.
    if old_options.get("builder") == new_options.get("builder"):
        old_tools, new_tools = record.get("tool_versions") or {}, config.get("tools") or {}
        for tool in sorted(set(old_tools) | set(new_tools)):
            if old_tools.get(tool) != new_tools.get(tool):
                reasons.append(f"{tool}: {old_tools.get(tool, 'none')} -> "
                               f"{new_tools.get(tool, 'none')}")
        old_format = record.get("native_writer_format")
        new_format = config.get("native_writer_format")
        if old_format != new_format:
            reasons.append(f"native writer format: {old_format} -> {new_format}")
    if not reasons and record.get("build_key") != key:
        reasons.append("the platform or the resolved digests changed")
    if not reasons and not describes(record, output, key):
        reasons.append(f"{output.name} is missing" if not output.exists() else
                       f"{output.name} changed since {record_path.name} was written")
    return reasons


class ImageUpToDate(config_changed):  # type: ignore[misc]  # doit is untyped
    """doit uptodate for mkfs:<image>: the config is the one doit last built and the record
    beside the output says it is that build. ``str()`` says why not, in words."""

    def __init__(self, config: dict[str, Any], output: Path, record: Path, key: str) -> None:
        super().__init__(config)
        self.output, self.record, self.key = output, record, key
        self._known = True

    def __call__(self, task: Any, values: dict[str, Any]) -> bool:
        self._known = values.get("_config_changed") is not None
        same_config: bool = super().__call__(task, values)
        return same_config and describes(read_record(self.record), self.output, self.key)

    def __str__(self) -> str:
        reasons = rebuild_reasons(read_record(self.record), self.config, self.output, self.key)
        if not reasons:
            reasons = ["doit has no state for this task (a new or reset database); the step"
                       f" finds {self.output.name} already built and only records that"
                       if self._known is False else "the build config changed"]
        return "would rebuild: " + "; ".join(reasons)

    __repr__ = __str__
