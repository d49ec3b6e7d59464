"""scripts/build.sh installs only when the venv is missing or pyproject.toml changed.

The copy of the script runs in a scratch checkout whose venv has a ``pip``
that fails as it does on a runner without a package index (and records
that it was called) and a ``rootfs`` that records its arguments: what is
checked is the script's own decision, the part issue 15 found wrong.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "pipeline").mkdir()
    shutil.copy(REPO / "scripts/build.sh", root / "scripts/build.sh")
    shutil.copy(REPO / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(REPO / "pipeline/__init__.py", root / "pipeline/__init__.py")
    bin_dir = root / ".venv/bin"
    bin_dir.mkdir(parents=True)
    tools = {
        "python": "#!/bin/sh\nexit 0\n",
        # No package index: pip fails unless the test lets it install.
        "pip": f'#!/bin/sh\necho "pip $*" >> {root}/calls\n'
               f'[ -e {root}/index-reachable ] || {{ echo "no index" >&2; exit 1; }}\n'
               f'cp {root}/rootfs.installed {bin_dir}/rootfs\n',
    }
    (root / "rootfs.installed").write_text(f'#!/bin/sh\necho "rootfs $*" >> {root}/calls\n')
    (root / "rootfs.installed").chmod(0o755)
    for name, text in tools.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return root


def build(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(root / "scripts/build.sh"), *args], capture_output=True,
                          text=True, timeout=60, check=False)


def calls(root: Path) -> list[str]:
    path = root / "calls"
    lines = path.read_text().splitlines() if path.exists() else []
    path.unlink(missing_ok=True)
    return lines


def test_build_installs_once_then_only_when_pyproject_changes(tmp_path: Path) -> None:
    root = checkout(tmp_path)
    (root / "index-reachable").touch()
    assert build(root, "frozen=1").returncode == 0
    assert calls(root) == ["pip install -q -e .", "rootfs frozen=1"]
    # The index is gone: a complete venv still builds, without asking pip.
    (root / "index-reachable").unlink()
    second = build(root)
    assert second.returncode == 0, second.stderr
    assert calls(root) == ["rootfs "]
    # A new dependency: install again (and fail loudly without an index).
    with open(root / "pyproject.toml", "a") as f:
        f.write("\n# a changed dependency\n")
    third = build(root)
    assert third.returncode != 0 and "no index" in third.stderr
    assert calls(root) == ["pip install -q -e ."]
