"""The package layout docs/architecture.md draws: stages as subpackages, imports one way.

A reader who opens ``pipeline/`` sees the architecture; these checks keep it
that way (issue 10): at most eight modules directly in ``pipeline/``, no module
over 400 lines, and no import from a stage to a stage above it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"
MAX_TOP_LEVEL_MODULES = 8
MAX_MODULE_LINES = 400
# Lower stages first: a module may import only from its own stage or a lower one.
# `errors` sits under everything; registry and layers are siblings that never
# import each other (the overlap tee is a protocol, not a registry import).
STAGE_RANK = {"errors": 0, "base": 1, "oci": 2, "registry": 3, "layers": 3, "local": 3, "flat": 4,
              "ext4": 5, "remote": 5, "project": 6, "tasks": 7,
              # The command line (`rootfs`, `python -m pipeline`) runs doit with the tasks.
              "cli": 8, "__main__": 9}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _stage(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else Path(rel[0]).stem


def _imported_stages(path: Path) -> set[str]:
    stages = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import; the code base imports absolutely"
            names = [node.module or ""]
        for name in names:
            parts = name.split(".")
            if parts[0] == "pipeline" and len(parts) > 1:
                stages.add(parts[1])
    return stages


def test_the_top_level_holds_few_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_holds_too_much(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{path.relative_to(PACKAGE)} has {lines} lines: split it"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down_the_stages(path: Path) -> None:
    own = _stage(path)
    if own == "__init__":
        return
    upward = sorted(stage for stage in _imported_stages(path) - {own}
                    if STAGE_RANK.get(stage, 99) >= STAGE_RANK[own])
    assert upward == [], f"{path.relative_to(PACKAGE)} ({own}) imports {upward}"


def test_every_stage_is_ranked() -> None:
    stages = {_stage(p) for p in _modules()} - {"__init__"}
    assert stages <= set(STAGE_RANK), stages - set(STAGE_RANK)


def test_every_stage_is_a_regular_package() -> None:
    # A directory without __init__.py still imports (as a namespace package), so
    # nothing else would notice one; packaging tools and readers expect one.
    folders = {p.parent for p in _modules()} - {PACKAGE}
    missing = sorted(str(f.relative_to(PACKAGE)) for f in folders
                     if not (f / "__init__.py").is_file())
    assert missing == [], f"no __init__.py in {missing}"
