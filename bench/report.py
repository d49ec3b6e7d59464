"""The results table, the targets of issue 4 with pass/fail, and the JSON result file.

Times are medians over the runs, each side's median taken on its own;
ratios are ratios of medians. Peak memory is the largest peak over the
runs (see bench/procmon.py: the sum of RSS over the process tree, PSS in
the JSON). A target whose inputs were not measured (scenario not selected)
is reported as "n/a", never as a pass.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .scenarios import Samples

__all__ = ["Target", "targets", "render", "machine", "write_json", "MEMORY_LIMIT"]

MiB = 1 << 20
MEMORY_LIMIT = 300 * MiB
_TITLES = {"1": "1 cold single image",
           "2": "2 cold batch of 10", "3": "3 no-op rerun of batch",
           "4": "4 tag bump (new top layer)", "5": "5 1 GiB image",
           "layers": "L multi-layer whiteouts",
           "remote": "R batch from a warm remote cache"}


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    limit: str
    value: float | None
    passed: bool | None
    shown: str

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "limit": self.limit, "value": self.value,
                "passed": self.passed}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _target(name: str, limit: str, value: float | None, ok: Callable[[float], bool],
            fmt: str) -> Target:
    if value is None:
        return Target(name, limit, None, None, "n/a")
    return Target(name, limit, round(value, 4), ok(value), fmt.format(value))


def targets(results: dict[str, Samples]) -> list[Target]:
    med = {sid: (Samples.median(s.ours), Samples.median(s.peer), Samples.median(s.floor))
           for sid, s in results.items()}
    get = lambda sid, i: med.get(sid, (None, None, None))[i]  # noqa: E731
    ours_peaks = [p for s in results.values() if (p := Samples.peak(s.ours)) is not None]
    return [
        _target("cold single / peer", "<= 0.50", _ratio(get("1", 0), get("1", 1)),
                lambda v: v <= 0.5, "{:.2f}"),
        _target("cold single / floor", "<= 1.30", _ratio(get("1", 0), get("1", 2)),
                lambda v: v <= 1.3, "{:.2f}x"),
        _target("cold batch / peer", "<= 0.25", _ratio(get("2", 0), get("2", 1)),
                lambda v: v <= 0.25, "{:.2f}"),
        _target("no-op rerun / cold batch", "< 2 %", _ratio(get("3", 0), get("2", 0)),
                lambda v: v < 0.02, "{:.1%}"),
        _target("tag bump / cold single", "<= 0.40", _ratio(get("4", 0), get("1", 0)),
                lambda v: v <= 0.4, "{:.2f}"),
        _target("batch from remote cache / cold batch", "<= 0.30",
                _ratio(get("remote", 0), get("remote", 1)), lambda v: v <= 0.3, "{:.2f}"),
        _target("peak memory, any image (RSS sum)", "< 300 MiB",
                max(ours_peaks) / MiB if ours_peaks else None,
                lambda v: v < MEMORY_LIMIT / MiB, "{:.0f} MiB"),
    ]


def _mib(v: int | None) -> str:
    return "-" if v is None else f"{v / MiB:.0f}"


def _sec(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *[line(r) for r in rows]]


def render(results: dict[str, Samples], runs: int) -> str:
    rows = []
    for sid, title in _TITLES.items():
        s = results.get(sid)
        if s is None:
            continue
        ours, peer, floor = Samples.median(s.ours), Samples.median(s.peer), Samples.median(s.floor)
        ratio = _ratio(ours, peer)
        rows.append([title, _sec(ours), _sec(peer), "-" if ratio is None else f"{ratio:.2f}",
                     _sec(floor), _mib(Samples.peak(s.ours)),
                     _mib(Samples.peak(s.ours, "peak_pss")), _mib(Samples.peak(s.peer))])
    out = [f"Medians of {runs} run(s); memory is the peak over runs, in MiB "
           "(RSS summed over the process tree; PSS beside it for ours).", ""]
    out += _table(["scenario", "ours s", "peer s", "ours/peer", "floor s", "ours RSS",
                   "ours PSS", "peer RSS"], rows)
    out += ["", "Where the time goes (median seconds per step; ours: summed task time, "
                "overlapping with doit -n):", ""]
    step_rows = []
    for sid, title in _TITLES.items():
        s = results.get(sid)
        if s is None:
            continue
        fmt = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in d.items()) or "-"  # noqa: E731
        step_rows.append([title, fmt(Samples.median_steps(s.ours)),
                          fmt(Samples.median_steps(s.peer)),
                          fmt(Samples.median_steps(s.floor))])
    out += _table(["scenario", "ours", "peer", "floor"], step_rows)
    s1 = results.get("1")
    if s1 is not None and s1.checked_floor:
        checked, ours = Samples.median(s1.checked_floor), Samples.median(s1.ours)
        ratio = _ratio(ours, checked)
        steps = ", ".join(f"{k} {v:.2f}"
                          for k, v in Samples.median_steps(s1.checked_floor).items())
        out += ["", "Checked floor (scenario 1: the floor plus the blob's and the stream's "
                    "sha256, both written and fsynced, and the image's sha256; shown, not a "
                    f"target): {_sec(checked)} s ({steps}); ours / it: "
                    f"{'-' if ratio is None else f'{ratio:.2f}x'}"]
    out += ["", "Targets (issue 4):", ""]
    out += _table(["target", "limit", "measured", "result"],
                  [[t.name, t.limit, t.shown,
                    "n/a" if t.passed is None else ("PASS" if t.passed else "FAIL")]
                   for t in targets(results)])
    return "\n".join(out)


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, check=False)
    except OSError:
        return "missing"
    text = (p.stdout + p.stderr).strip()
    return text.splitlines()[0] if text else "?"


def revision() -> str:
    """The repository revision measured (``git describe --always --dirty``)."""
    return _first_line(["git", "-C", str(Path(__file__).resolve().parents[1]), "describe",
                        "--always", "--dirty"])


def machine() -> dict[str, object]:
    """What the numbers were measured on."""
    cpu = "?"
    try:
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1) if match else "?"
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import isal
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / (1 << 30), 1),
            "kernel": platform.release(), "python": sys.version.split()[0],
            "isal": isal.__version__, "mkfs.ext4": _first_line(["mkfs.ext4", "-V"]),
            "skopeo": _first_line(["skopeo", "--version"]),
            "umoci": _first_line(["umoci", "--version"]),
            "registry": _first_line(["docker-registry", "--version"])}


def write_json(path: Path, *, results: dict[str, Samples], runs: int,
               world: dict[str, object], info: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"runs": runs, "machine": machine(), "revision": revision(), "world": world, **info,
           "scenarios": {sid: s.to_json() for sid, s in results.items()},
           "targets": [t.to_json() for t in targets(results)]}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
