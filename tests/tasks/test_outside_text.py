"""What an image says reaches the user escaped, and what ext4 could not hold is reported.

End to end through the real doit and the real registry: an image whose
config names an architecture with ESC, BEL and a newline is refused with a
FAILED line that holds them escaped, and an image with a file time ext4
cannot store builds with the ``mkfs.times_clamped`` warning and the path in
``out/<name>.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.harness.doitrun import run_doit
from tests.harness.images import dir, file, make_image, make_index, make_layer
from tests.harness.push import push
from tests.harness.registry import Registry

# Real doit runs against the real registry: seconds each.
pytestmark = pytest.mark.slow

HOSTILE_ARCH = "arm\x1b[2J\x07\nFAILED: fake"
# 2500-01-01: past what a 256-byte ext4 inode holds (2446-05-10); a PAX record
# carries it (the ustar field stops in 2242).
YEAR_2500 = "16725225600"


def project(tmp_path: Path, name: str, ref: str) -> Path:
    (tmp_path / "images.toml").write_text(f'[images.{name}]\nref = "{ref}"\n')
    return tmp_path


@pytest.mark.parametrize("as_index", [False, True], ids=["manifest", "index"])
def test_an_architecture_with_control_characters_is_printed_escaped(
        registry: Registry, repo: str, tmp_path: Path, as_index: bool) -> None:
    image = make_image([make_layer([file("a", b"x")])], architecture=HOSTILE_ARCH)
    push(registry, repo, "v1", make_index([image]) if as_index else image)
    run = run_doit(project(tmp_path, "arch", f"{registry.host}/{repo}:v1"), "resolve:arch",
                   "log=console", timeout=120)
    assert run.returncode != 0
    shown = run.stdout + run.stderr
    # No raw control byte on the terminal: nothing can clear it, ring or forge a line.
    assert not any(ch in shown for ch in "\x1b\x07\r"), repr(shown)
    failed = [line for line in shown.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1, shown
    assert failed[0].startswith(f"FAILED resolve:arch (arch): {registry.host}/{repo}:v1 has no"
                                " image for platform linux/amd64; it offers: linux/arm"), failed
    # Platforms are lowercased; the escapes stay escapes.
    assert "\\x1b[2j\\x07\\nfailed: fake" in failed[0], failed
    assert not any(line.startswith("FAILED: fake") for line in shown.splitlines())


def test_clamped_times_are_a_warning_and_in_the_build_record(
        registry: Registry, repo: str, tmp_path: Path) -> None:
    image = make_image([make_layer([dir("etc"), file("etc/future", b"x", pax={"mtime": YEAR_2500}),
                                    file("etc/now", b"y")])])
    push(registry, repo, "v1", image)
    p = project(tmp_path, "future", f"{registry.host}/{repo}:v1")
    run = run_doit(p, timeout=180).check()
    warned = [e for e in run.events if e.get("event") == "mkfs.times_clamped"]
    assert len(warned) == 1, run.events
    assert (warned[0]["level"], warned[0]["count"], warned[0]["paths"]) == (
        "warning", 1, ["etc/future"])
    assert (warned[0]["image"], warned[0]["task"]) == ("future", "mkfs:future")
    assert warned[0]["reason"] == "outside the years ext4 inodes hold; out/<name>.json lists them"
    record = json.loads((p / "out" / "future.json").read_text())
    assert record["clamped_times"] == ["etc/future"]
