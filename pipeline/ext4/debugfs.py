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

debugfs echoes every script line to stdout and flushes it, one write per
command: its output goes to a file (or /dev/null), never to a pipe this
process would have to wake up for tens of thousands of times.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from pipeline.errors import Ext4Error, ToolError

__all__ = ["DirRecord", "LsEntry", "Script", "quote", "run_debugfs", "parse_ls_p",
           "parse_ls_p_raw", "list_directories", "DirectoryListing", "tool_env"]

log = structlog.get_logger(__name__)

# debugfs reads script lines into a BUFSIZ (8192 byte) buffer; a longer line
# would be split into two commands. Our longest line is a quoted 255-byte name.
MAX_LINE_BYTES = 8000

_BANNER_RE = re.compile(rb"debugfs [0-9][^\n]*\([^\n]*\)")
# One token of a script of ``ls -p <N>`` commands: the script echo that opens a
# listing, one record, or the blank line that closes it. ls.c, PARSE_OPT:
# "/%u/%06o/%d/%d/%.*s/" then "/" for directories or "%llu/", then "\n".
# Names never contain "/", so [^/]* cannot overrun the record; the first
# byte (d, / or newline) picks the alternative, so the tokens are unique.
_LS_TOKEN_RE = re.compile(rb"(debugfs: ls -p <([0-9]+)>\n|"
                          rb"/([0-9]+)/([0-7]+)/(-?[0-9]+)/(-?[0-9]+)/([^/]*)/([0-9]*)/\n|\n)")

LsEntry = tuple[bytes, bytes, bytes, bytes, bytes, bytes]
"""(ino, mode, uid, gid, name, size) exactly as ``ls -p`` printed them; the
mode is six octal digits and the size is empty for directories."""

_TOKEN_RE = re.compile(r"[-A-Za-z0-9_.<>@\[\]/]+")
# One line template per field name, checked once (a few dozen names in all).
_SIF_LINES: dict[str, bytes] = {}


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
        line = _SIF_LINES.get(field)
        if line is None:
            line = _SIF_LINES[field] = b"sif <%d> " + _plain(field) + b" %d"
        if value.__class__ is int:
            self._lines.append(line % (ino, value))
        else:
            self._lines.append(b"sif <%d> %s %s" % (ino, _plain(field), _token(str(value))))

    def to_bytes(self) -> bytes:
        return b"".join(line + b"\n" for line in self._lines)

    def write(self, path: Path) -> None:
        with open(path, "wb") as f:
            f.write(self.to_bytes())


def _argv(image: Path, script: Path | None, request: str | None, write: bool) -> list[str]:
    if (script is None) == (request is None):
        raise AssertionError("internal error: run_debugfs needs exactly one of script, request")
    argv = ["debugfs"]
    if write:
        argv.append("-w")
    argv += ["-f", str(script)] if script is not None else ["-R", str(request)]
    argv.append(str(image))
    return argv


def _complaints(stderr: bytes) -> list[bytes]:
    return [line for line in stderr.split(b"\n")
            if line.strip() and not _BANNER_RE.fullmatch(line.strip())]


def _failure(image: Path, script: Path | None, request: str | None, returncode: int,
             stderr: bytes) -> ToolError:
    problems = _complaints(stderr)
    text = b"\n".join(problems or [stderr]).decode("utf-8", "backslashreplace")
    what = "script " + script.name if script is not None else repr(request)
    return ToolError("debugfs", f"{what} on {image.name} failed", returncode=returncode,
                     stderr=text)


def run_debugfs(image: Path, *, script: Path | None = None, request: str | None = None,
                write: bool = False, env: Mapping[str, str] | None = None,
                stdout: bool = True) -> bytes:
    """Run debugfs on ``image`` with a script file or one ``-R`` request; return stdout
    (``b""`` when ``stdout`` is false: the echo of a long script is thrown away).

    Raises ToolError when it exits non-zero or prints anything but its banner
    on stderr (a failed command still exits 0).
    """
    argv = _argv(image, script, request, write)
    with tempfile.TemporaryFile() as err, \
            (tempfile.TemporaryFile() if stdout else open(os.devnull, "wb")) as out:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                              env=tool_env(env), check=False)
        err.seek(0)
        stderr = err.read()
        if proc.returncode != 0 or _complaints(stderr):
            raise _failure(image, script, request, proc.returncode, stderr)
        if not stdout:
            return b""
        out.seek(0)
        return out.read()


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


def parse_ls_p_raw(output: bytes) -> dict[int, list[LsEntry]]:
    """Split the stdout of a script of ``ls -p <ino>`` commands into listings, keyed by
    directory inode, each record's fields left as printed (see LsEntry).

    The script echo (``debugfs: ls -p <N>``) opens each listing; records
    follow; a blank line closes it. Anything else is a ToolError.
    """
    tokens = _LS_TOKEN_RE.findall(output)
    if sum([len(t[0]) for t in tokens]) != len(output):
        pos = 0                              # slow path: say where the stray bytes are
        for match in _LS_TOKEN_RE.finditer(output):
            if match.start() != pos:
                break
            pos = match.end()
        raise ToolError("debugfs", f"unexpected ls -p output at byte {pos}: "
                        f"{output[pos:pos + 80]!r}; expected 'debugfs: ls -p <N>' or a record")
    listings: dict[int, list[LsEntry]] = {}
    records: list[LsEntry] | None = None
    for token in tokens:
        if records is None:
            if not token[1]:
                raise ToolError("debugfs", f"unexpected ls -p output {token[0][:80]!r}; "
                                           "expected 'debugfs: ls -p <N>'")
            records = listings[int(token[1])] = []
        elif token[2]:
            records.append(token[2:])
        elif token[1]:
            raise ToolError("debugfs", f"unterminated ls -p listing before {token[0]!r}")
        else:
            records = None
    if records is not None:
        raise ToolError("debugfs", "unterminated ls -p listing at the end of the output")
    return listings


def parse_ls_p(output: bytes) -> dict[int, list[DirRecord]]:
    """Parse the stdout of a script of ``ls -p <ino>`` commands, keyed by directory inode."""
    return {ino: [DirRecord(int(i), int(m, 8), int(u), int(g), n, int(s) if s else None)
                  for i, m, u, g, n, s in records]
            for ino, records in parse_ls_p_raw(output).items()}


def _ls_script(inos: Sequence[int], scratch: Path) -> Path:
    path = scratch / "ls.debugfs"
    path.write_bytes(b"".join(b"ls -p <%d>\n" % ino for ino in inos))
    return path


def list_directories(image: Path, inos: Sequence[int], scratch: Path) -> dict[int, list[DirRecord]]:
    """``ls -p`` every directory inode in ``inos`` in one debugfs run.

    ``.``, ``..`` and empty slots are dropped; every requested directory must be listed.
    """
    listings = parse_ls_p(run_debugfs(image, script=_ls_script(inos, scratch)))
    missing = set(inos) - listings.keys()
    if missing or len(listings) != len(set(inos)):
        raise ToolError("debugfs", f"ls -p listed {len(listings)} directories, expected "
                        f"{len(set(inos))} (missing inodes {sorted(missing)[:5]})")
    # ls iterates with DIRENT_FLAG_INCLUDE_EMPTY: unused space (a fresh block
    # of lost+found, an unlinked first entry) shows up as inode 0.
    return {ino: [r for r in records if r.ino != 0 and r.name not in (b".", b"..")]
            for ino, records in listings.items()}


class DirectoryListing:
    """``ls -p`` of many directories in one debugfs run, started now and read later,
    so the caller can work while debugfs lists.

    ``result()`` gives the raw listings (``.``, ``..`` and empty slots kept),
    or None when debugfs complained: listing an inode that is not a directory
    is an expected outcome for a caller checking a guess, not a tool failure.
    """

    def __init__(self, image: Path, inos: Sequence[int], scratch: Path) -> None:
        self._out = tempfile.TemporaryFile()
        self._err = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(
                _argv(image, _ls_script(inos, scratch), None, False), stdin=subprocess.DEVNULL,
                stdout=self._out, stderr=self._err, env=tool_env())
        except BaseException:
            self._out.close()
            self._err.close()
            raise

    def result(self) -> dict[int, list[LsEntry]] | None:
        try:
            returncode = self._proc.wait()
            self._err.seek(0)
            complaints = _complaints(self._err.read())
            if returncode != 0 or complaints:
                log.debug("ext4.listing_refused", returncode=returncode,
                          stderr=b" | ".join(complaints[:3]).decode("utf-8", "replace"))
                return None
            self._out.seek(0)
            return parse_ls_p_raw(self._out.read())
        finally:
            self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self._out.close()
        self._err.close()


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
