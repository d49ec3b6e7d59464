"""Talking to debugfs: writing its command scripts, running it, parsing ``ls -p``.

debugfs is driven through ``-f script`` files. Its command line parser
(lib/ss ``ss_parse``) splits on blanks, groups with double quotes and reads
``""`` inside quotes as one literal quote; it has no backslash escapes, and the
script reader cuts each line at the first ``\\n`` or ``\\r``. So every argument
we write is either a number, an ``<ino>`` reference, a fixed keyword, or a
quoted byte string that holds no NUL, CR or LF; anything else is refused here
rather than handed to a parser that would silently truncate it.

debugfs exits 0 when a command fails and reports the failure only on stderr,
so nothing it prints there is trusted to be harmless: any line other than its
version banner fails the run with ToolError. ``ls -p`` output is parsed as
records (``/ino/mode/uid/gid/name/size/``), never as lines: a name may hold a
newline, but never a ``/``, which is what makes the records unambiguous.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from .errors import Ext4Error, ToolError

__all__ = ["DirRecord", "Script", "quote", "run_debugfs", "parse_ls_p", "list_directories",
           "tool_env"]

log = structlog.get_logger(__name__)

# debugfs reads script lines into a BUFSIZ (8192 byte) buffer; a longer line
# would be split into two commands. Our longest line is a quoted 255-byte name.
MAX_LINE_BYTES = 8000

_BANNER_RE = re.compile(rb"debugfs [0-9][^\n]*\([^\n]*\)")
_ECHO_RE = re.compile(rb"debugfs: ls -p <([0-9]+)>\n")
# ls.c, PARSE_OPT: "/%u/%06o/%d/%d/%.*s/" then "/" for directories or "%llu/",
# then "\n". Names never contain "/", so [^/]* cannot overrun the record.
_RECORD_RE = re.compile(rb"/([0-9]+)/([0-7]+)/(-?[0-9]+)/(-?[0-9]+)/([^/]*)/([0-9]*)/\n")


_TOKEN_RE = re.compile(r"[-A-Za-z0-9_.<>@\[\]/]+")


@functools.lru_cache(maxsize=4096)
def _plain(arg: str) -> bytes:
    if not _TOKEN_RE.fullmatch(arg):
        raise AssertionError(f"internal error: unsafe debugfs token {arg!r}")
    return arg.encode("ascii")


def _token(arg: str) -> bytes:
    # Inode references and times differ on every line: check them without the cache.
    if arg[:1] in "<@" and arg[1:].rstrip(">").isdigit() and arg.isascii():
        return arg.encode("ascii")
    return _plain(arg)


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment e2fsprogs tools run in: C locale, no pager, nothing inherited
    that changes their output (MKE2FS_CONFIG, E2FSPROGS_FAKE_TIME) unless given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("E2FSPROGS", "MKE2FS", "DEBUGFS", "LC_", "SOURCE_DATE"))
           and k not in ("LANG", "LANGUAGE", "PAGER", "TZ")}
    env.update({"LC_ALL": "C", "LANG": "C", "TZ": "UTC", "PAGER": "__none__",
                "DEBUGFS_PAGER": "__none__"})
    if extra:
        env.update(extra)
    return env


def quote(arg: bytes, *, what: str) -> bytes:
    """Quote one argument for debugfs's parser; ``what`` names it in the error."""
    if any(c in arg for c in b"\x00\r\n"):
        raise Ext4Error(f"{what} {os.fsdecode(arg)!r} contains a NUL, carriage return or "
                        f"newline, which debugfs cannot address by name; rename it in the image")
    return b'"' + arg.replace(b'"', b'""') + b'"'


class Script:
    """A debugfs command script, built line by line and written once."""

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[bytes] = []

    def __len__(self) -> int:
        return len(self._lines)

    def command(self, *args: bytes | str | int) -> None:
        """Append one command; str and int arguments must be plain tokens, bytes are
        written as given (quote them first)."""
        parts = []
        for arg in args:
            if isinstance(arg, int):
                parts.append(b"%d" % arg)
            elif isinstance(arg, str):
                parts.append(_token(arg))
            else:
                parts.append(arg)
        line = b" ".join(parts)
        if len(line) > MAX_LINE_BYTES or b"\n" in line or b"\r" in line:
            raise AssertionError(f"internal error: debugfs line too long or multi-line: {line!r}")
        self._lines.append(line)

    def sif(self, ino: int, field: str, value: int | str) -> None:
        """``set_inode_field <ino> field value``; the hot path, tens of thousands per image."""
        encoded = b"%d" % value if isinstance(value, int) else _token(value)
        self._lines.append(b"sif <%d> %s %s" % (ino, _token(field), encoded))

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            for line in self._lines:
                f.write(line)
                f.write(b"\n")


def run_debugfs(image: Path, *, script: Path | None = None, request: str | None = None,
                write: bool = False, env: Mapping[str, str] | None = None) -> bytes:
    """Run debugfs on ``image`` with a script file or one ``-R`` request; return stdout.

    Raises ToolError when it exits non-zero or prints anything but its banner
    on stderr (a failed command still exits 0).
    """
    if (script is None) == (request is None):
        raise AssertionError("internal error: run_debugfs needs exactly one of script, request")
    argv = ["debugfs"]
    if write:
        argv.append("-w")
    argv += ["-f", str(script)] if script is not None else ["-R", str(request)]
    argv.append(str(image))
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                          env=tool_env(env), check=False)
    problems = [line for line in proc.stderr.split(b"\n")
                if line.strip() and not _BANNER_RE.fullmatch(line.strip())]
    if proc.returncode != 0 or problems:
        stderr = b"\n".join(problems or [proc.stderr]).decode("utf-8", "backslashreplace")
        what = "script " + script.name if script is not None else repr(request)
        raise ToolError("debugfs", f"{what} on {image.name} failed",
                        returncode=proc.returncode, stderr=stderr)
    return proc.stdout


@dataclass(frozen=True, slots=True)
class DirRecord:
    """One directory entry as ``ls -p`` prints it."""

    ino: int
    mode: int
    """Full i_mode: file type bits and permissions."""
    uid: int
    gid: int
    name: bytes
    size: int | None
    """i_size, or None for directories (``ls -p`` prints none for them)."""


def parse_ls_p(output: bytes) -> dict[int, list[DirRecord]]:
    """Parse the stdout of a script of ``ls -p <ino>`` commands, keyed by directory inode.

    The script echo (``debugfs: ls -p <N>``) opens each listing; records
    follow; a blank line closes it. Anything else is an internal error.
    """
    listings: dict[int, list[DirRecord]] = {}
    pos = 0
    end = len(output)
    while pos < end:
        echo = _ECHO_RE.match(output, pos)
        if echo is None:
            raise ToolError("debugfs", f"unexpected ls -p output at byte {pos}: "
                            f"{output[pos:pos + 80]!r}; expected 'debugfs: ls -p <N>'")
        pos = echo.end()
        records: list[DirRecord] = []
        while (record := _RECORD_RE.match(output, pos)) is not None:
            ino, mode, uid, gid, name, size = record.groups()
            records.append(DirRecord(int(ino), int(mode, 8), int(uid), int(gid), name,
                                     int(size) if size else None))
            pos = record.end()
        if output[pos:pos + 1] != b"\n":
            raise ToolError("debugfs", f"unterminated ls -p listing at byte {pos}: "
                            f"{output[pos:pos + 80]!r}")
        pos += 1
        listings[int(echo.group(1))] = records
    return listings


def list_directories(image: Path, inos: Sequence[int], scratch: Path) -> dict[int, list[DirRecord]]:
    """``ls -p`` every directory inode in ``inos`` in one debugfs run.

    ``.``, ``..`` and empty slots are dropped; every requested directory must be listed.
    """
    script = Script()
    for ino in inos:
        script.command("ls", "-p", f"<{ino}>")
    path = scratch / "ls.debugfs"
    script.write(path)
    listings = parse_ls_p(run_debugfs(image, script=path))
    missing = set(inos) - listings.keys()
    if missing or len(listings) != len(set(inos)):
        raise ToolError("debugfs", f"ls -p listed {len(listings)} directories, expected "
                        f"{len(set(inos))} (missing inodes {sorted(missing)[:5]})")
    # ls iterates with DIRENT_FLAG_INCLUDE_EMPTY: unused space (a fresh block
    # of lost+found, an unlinked first entry) shows up as inode 0.
    return {ino: [r for r in records if r.ino != 0 and r.name not in (b".", b"..")]
            for ino, records in listings.items()}


def xattr_value_files(values: Iterable[bytes], scratch: Path) -> dict[bytes, Path]:
    """Write each distinct xattr value to its own file for ``ea_set -f``.

    Values go through files because ``ea_set``'s inline value parser stops at
    the first double quote and reads C escapes; a file is taken byte for byte.
    """
    files: dict[bytes, Path] = {}
    folder = scratch / "xattr-values"
    folder.mkdir(exist_ok=True)
    for value in values:
        if value not in files:
            path = folder / f"{len(files):06d}"
            path.write_bytes(value)
            files[value] = path
    return files
