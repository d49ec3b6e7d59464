"""A newer e2fsprogs (1.47.2 from bookworm-backports) for cross-checking images, unpacked,
never installed.

``newer_e2fsprogs()`` downloads ``e2fsprogs`` and ``libext2fs2`` with ``apt-get
download`` through a private apt state (its own lists, cache and a sources
file naming the system's Debian mirror with the suite changed), unpacks
them with ``dpkg -x`` and returns how to run the tools
(``LD_LIBRARY_PATH`` pointing at the unpacked library). The result is
cached under ``$XDG_CACHE_HOME/rootfs-pipeline/`` (renamed into place when
complete). Returns None when apt, the mirror or the packages are
unavailable, so the tests that use it skip cleanly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["NewerE2fsprogs", "newer_e2fsprogs", "SUITE"]

SUITE = "bookworm-backports"
PACKAGES = ("e2fsprogs", "libext2fs2")
_TIMEOUT = 120                              # seconds per apt step: a slow mirror is a skip
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


@dataclass(frozen=True)
class NewerE2fsprogs:
    root: Path
    version: str

    def tool(self, name: str) -> str:
        return str(self.root / "sbin" / name)

    @property
    def env(self) -> dict[str, str]:
        return {"LD_LIBRARY_PATH": str(self.root / "lib" / "x86_64-linux-gnu")}


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "rootfs-pipeline" / f"e2fsprogs-{SUITE}"


def _mirror() -> str:
    try:
        text = _SOURCES.read_text()
    except OSError:
        return _DEFAULT_MIRROR
    for uri in re.findall(r"^URIs:\s*(\S+)", text, re.MULTILINE):
        if uri.rstrip("/").endswith("/debian"):
            return str(uri)
    return _DEFAULT_MIRROR


def _version(root: Path) -> str | None:
    proc = subprocess.run([str(root / "sbin" / "e2fsck"), "-V"], capture_output=True,
                          text=True, env={"LD_LIBRARY_PATH": str(root / "lib" /
                                                                 "x86_64-linux-gnu")},
                          check=False)
    match = re.search(r"e2fsck (\S+)", proc.stderr + proc.stdout)
    return match.group(1) if proc.returncode == 0 and match else None


def newer_e2fsprogs() -> NewerE2fsprogs | None:
    final = _cache_dir()
    if (final / "sbin" / "e2fsck").exists():
        version = _version(final)
        return NewerE2fsprogs(final, version) if version else None
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        return None
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=".tmp-") as work_name:
        work = Path(work_name)
        for sub in ("lists/partial", "cache/archives/partial", "sources", "root", "debs"):
            (work / sub).mkdir(parents=True)
        (work / "sources" / "backports.sources").write_text(
            f"Types: deb\nURIs: {_mirror()}\nSuites: {SUITE}\nComponents: main\n"
            f"Signed-By: {_KEYRING}\n")
        apt = ["apt-get", "-q", "-o", f"Dir::State::Lists={work / 'lists'}",
               "-o", f"Dir::Cache={work / 'cache'}", "-o", "Dir::Etc::SourceList=/dev/null",
               "-o", f"Dir::Etc::SourceParts={work / 'sources'}", "-o", "Debug::NoLocking=1"]
        try:
            subprocess.run([*apt, "update"], check=True, capture_output=True,
                           timeout=_TIMEOUT)
            subprocess.run([*apt, "download", *(f"{p}/{SUITE}" for p in PACKAGES)],
                           check=True, capture_output=True, timeout=_TIMEOUT,
                           cwd=work / "debs")
            for deb in sorted((work / "debs").glob("*.deb")):
                subprocess.run(["dpkg", "-x", str(deb), str(work / "root")], check=True,
                               capture_output=True, timeout=_TIMEOUT)
        except (subprocess.SubprocessError, OSError):
            return None
        version = _version(work / "root")
        if version is None:
            return None
        try:
            os.rename(work / "root", final)
        except OSError:
            if not (final / "sbin" / "e2fsck").exists():
                return None
    return NewerE2fsprogs(final, version)
