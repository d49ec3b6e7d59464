"""Log configuration: JSON lines with bound task, image and digest; console on a terminal."""

from __future__ import annotations

import io
import json
import threading

import pytest
import structlog

from pipeline.base.log import bound, choose_level, choose_mode, configure_logging
from pipeline.base.terminal import Terminal
from pipeline.errors import SettingError


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def reset_structlog():
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def test_json_lines_carry_bound_context_per_thread() -> None:
    out = io.StringIO()
    configure_logging(mode="json", terminal=Terminal(out))
    log = structlog.get_logger("pipeline.test")

    def work(image: str) -> None:
        with bound(task=f"mkfs:{image}", image=image, digest=None):
            log.info("step done", seconds=1.5)

    threads = [threading.Thread(target=work, args=(name,)) for name in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.info("outside")
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    by_image = {e.get("image"): e for e in events}
    assert set(by_image) == {"a", "b", None}
    assert {k: by_image["a"][k] for k in ("event", "task", "image", "seconds", "level")} == {
        "event": "step done", "task": "mkfs:a", "image": "a", "seconds": 1.5, "level": "info"}
    assert "digest" not in by_image["a"]
    assert "task" not in by_image[None]


def test_debug_is_filtered_at_info() -> None:
    out = io.StringIO()
    configure_logging(mode="json", terminal=Terminal(out), level="info")
    structlog.get_logger().debug("hidden")
    assert out.getvalue() == ""


def test_console_mode_renders_a_readable_line() -> None:
    out = TTY()
    configure_logging(mode="console", terminal=Terminal(out))
    structlog.get_logger().info("blob fetched", digest="sha256:ab")
    line = out.getvalue()
    assert "blob fetched" in line and "sha256:ab" in line and not line.startswith("{")


@pytest.mark.parametrize("requested, env, stream, mode", [
    pytest.param("json", {}, TTY(), "json", id="explicit-wins"),
    pytest.param(None, {"ROOTFS_LOG": "console"}, io.StringIO(), "console", id="environment"),
    pytest.param(None, {}, TTY(), "console", id="terminal"),
    pytest.param(None, {}, io.StringIO(), "json", id="not-a-terminal"),
])
def test_choose_mode(requested, env, stream, mode) -> None:
    assert choose_mode(requested, env, stream) == mode


def test_choose_mode_rejects_unknown() -> None:
    with pytest.raises(SettingError) as err:
        choose_mode("xml", {}, io.StringIO())
    assert str(err.value) == "log='xml' is not valid: expected one of json, console"


@pytest.mark.parametrize(("requested", "env", "level"), [
    pytest.param(None, {}, "info", id="default"),
    pytest.param(None, {"ROOTFS_LOG_LEVEL": "DEBUG"}, "debug", id="env-any-case"),
    pytest.param("warning", {"ROOTFS_LOG_LEVEL": "debug"}, "warning", id="request-wins"),
])
def test_choose_level(requested, env, level) -> None:
    assert choose_level(requested, env) == level


def test_choose_level_rejects_unknown() -> None:
    with pytest.raises(SettingError) as err:
        choose_level(None, {"ROOTFS_LOG_LEVEL": "loud"})
    assert str(err.value) == ("ROOTFS_LOG_LEVEL='loud' is not valid: expected one of debug, "
                              "info, warning, error")
