"""debugfs plumbing against the real debugfs: quoting, failure detection, ls -p records."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pipeline.errors import Ext4Error, ToolError
from pipeline.ext4.debugfs import (
    DirectoryListing,
    DirRecord,
    Script,
    list_directories,
    parse_ls_p,
    parse_ls_p_raw,
    quote,
    run_debugfs,
    xattr_value_files,
)
from tests.harness.ext4reader import Ext4Image

ODD_NAMES = [
    pytest.param(b"plain", id="plain"),
    pytest.param(b"with space", id="space"),
    pytest.param(b"tab\there", id="tab"),
    pytest.param(b'dq"inside', id="double-quote"),
    pytest.param(b'""', id="only-quotes"),
    pytest.param(b"'single'", id="single-quotes"),
    pytest.param(b"back\\slash\\", id="backslashes"),
    pytest.param(b"\\x41", id="c-escape-lookalike"),
    pytest.param(b"-f", id="option-lookalike"),
    pytest.param(b"<12>", id="inode-lookalike"),
    pytest.param(b"#comment", id="comment-lookalike"),
    pytest.param(b"!echo pwned", id="shell-escape-lookalike"),
    pytest.param(b"\xff\xfe latin1 \xe9", id="not-utf8"),
    pytest.param("ünïcødé ✓".encode(), id="utf8"),
    pytest.param(b"n" * 255, id="255-bytes"),
]


def mkfs(tmp: Path, staging: Path | None = None) -> Path:
    image = tmp / "fs.img"
    image.write_bytes(b"")
    os.truncate(image, 16 * 1024 * 1024)
    argv = ["mkfs.ext4", "-F", "-q", "-b", "4096", "-N", "256"]
    if staging is not None:
        argv += ["-d", str(staging)]
    subprocess.run([*argv, str(image)], check=True, capture_output=True,
                   env={**os.environ, "LC_ALL": "C"})
    return image


@pytest.mark.parametrize("name", ODD_NAMES)
def test_quoted_names_reach_debugfs_byte_for_byte(tmp_path: Path, name: bytes) -> None:
    image = mkfs(tmp_path)
    script = Script()
    script.command("mkdir", quote(name, what="test name"))
    path = tmp_path / "s"
    script.write(path)
    run_debugfs(image, script=path, write=True)
    with Ext4Image(image) as fs:
        names = {n for n, _, _ in fs.listdir(2)}
    assert names == {b"lost+found", name}


@pytest.mark.parametrize("name", [b"new\nline", b"carriage\rreturn", b"nul\0byte"])
def test_quote_refuses_what_debugfs_cannot_read(name: bytes) -> None:
    with pytest.raises(Ext4Error) as err:
        quote(name, what="device node name")
    assert str(err.value) == (
        f"device node name {os.fsdecode(name)!r} contains a NUL, carriage return or newline, "
        f"which debugfs cannot address by name; rename it in the image")


def test_quote_doubles_quotes() -> None:
    assert quote(b'a"b', what="x") == b'"a""b"'


@pytest.mark.parametrize("token", ["a b", 'x"', "semi;colon", "new\nline", ""])
def test_script_refuses_unsafe_plain_tokens(token: str) -> None:
    with pytest.raises(AssertionError, match="internal error: unsafe debugfs token"):
        Script().command("sif", token)


def test_failed_command_is_an_error_although_debugfs_exits_0(tmp_path: Path) -> None:
    image = mkfs(tmp_path)
    path = tmp_path / "s"
    path.write_bytes(b"sif <2> uid 7\nsif <99999> uid 1\n")
    proc = subprocess.run(["debugfs", "-w", "-f", str(path), str(image)], capture_output=True)
    assert proc.returncode == 0                   # the trap this module exists for
    with pytest.raises(ToolError) as err:
        run_debugfs(image, script=path, write=True)
    assert "<99999>: File not found by ext2_lookup" in str(err.value)
    assert str(err.value) == ("debugfs: script s on fs.img failed (exit status 0): "
                              "<99999>: File not found by ext2_lookup")


@pytest.mark.parametrize(("line", "complaint"), [
    pytest.param(b"nosuchcommand", "Command not found nosuchcommand", id="unknown-command"),
    pytest.param(b"sif <2> nosuchfield 1", "invalid field specifier: nosuchfield",
                 id="unknown-field"),
    pytest.param(b"sif <2> uid notanumber", "Couldn't parse 'notanumber' for field uid",
                 id="bad-value"),
    pytest.param(b'mkdir "unbalanced', "Unbalanced quotes", id="unbalanced-quote"),
])
def test_every_stderr_complaint_fails_the_run(tmp_path: Path, line: bytes,
                                              complaint: str) -> None:
    image = mkfs(tmp_path)
    path = tmp_path / "s"
    path.write_bytes(line + b"\n")
    with pytest.raises(ToolError, match=complaint):
        run_debugfs(image, script=path, write=True)


def test_clean_run_returns_stdout(tmp_path: Path) -> None:
    image = mkfs(tmp_path)
    out = run_debugfs(image, request="ls -p <2>")
    assert out.startswith(b"/2/040755/0/0/.//\n")
    assert run_debugfs(image, request="ls -p <2>", stdout=False) == b""


def test_discarded_stdout_still_fails_on_complaints(tmp_path: Path) -> None:
    image = mkfs(tmp_path)
    path = tmp_path / "s"
    path.write_bytes(b"sif <2> uid 7\nsif <2> nosuchfield 1\n")
    with pytest.raises(ToolError, match="invalid field specifier: nosuchfield"):
        run_debugfs(image, script=path, write=True, stdout=False)


def test_binary_xattr_values_round_trip_through_files(tmp_path: Path) -> None:
    image = mkfs(tmp_path)
    values = [bytes(range(256)), b'"quoted" \\x41 \n\r\0', b"", b"\0" * 1000]
    files = xattr_value_files(values + values[:1], tmp_path)
    assert len(files) == len(values)
    script = Script()
    for i, value in enumerate(values):
        script.command("ea_set", "-f", quote(os.fsencode(str(files[value])), what="path"),
                       "<2>", quote(f"user.v{i}".encode(), what="name"))
    path = tmp_path / "s"
    script.write(path)
    run_debugfs(image, script=path, write=True)
    with Ext4Image(image) as fs:
        got = fs.stat(2).xattrs
    assert got == {f"user.v{i}": v for i, v in enumerate(values)}


# -- ls -p records ---------------------------------------------------------------------


def test_parse_ls_p_reads_records_not_lines() -> None:
    output = (b"debugfs: ls -p <2>\n"
              b"/2/040755/0/0/.//\n/2/040755/0/0/..//\n"
              b"/12/100644/1000/-1/new\nline/5/\n"
              b"/13/100644/0/0/x\ndebugfs: ls -p <99>\n\n/0/\n"
              b"/14/040700/0/0/d//\n\n"
              b"debugfs: ls -p <14>\n"
              b"/14/040700/0/0/.//\n/2/040755/0/0/..//\n\n")
    listings = parse_ls_p(output)
    assert listings == {
        2: [DirRecord(2, 0o40755, 0, 0, b".", None), DirRecord(2, 0o40755, 0, 0, b"..", None),
            DirRecord(12, 0o100644, 1000, -1, b"new\nline", 5),
            DirRecord(13, 0o100644, 0, 0, b"x\ndebugfs: ls -p <99>\n\n", 0),
            DirRecord(14, 0o40700, 0, 0, b"d", None)],
        14: [DirRecord(14, 0o40700, 0, 0, b".", None), DirRecord(2, 0o40755, 0, 0, b"..", None)],
    }


def test_parse_ls_p_raw_keeps_fields_as_printed() -> None:
    output = (b"debugfs: ls -p <2>\n/2/040755/0/0/.//\n/12/100644/1000/-1/new\nline/5/\n\n"
              b"debugfs: ls -p <99>\n\n")
    assert parse_ls_p_raw(output) == {
        2: [(b"2", b"040755", b"0", b"0", b".", b""),
            (b"12", b"100644", b"1000", b"-1", b"new\nline", b"5")],
        99: []}


@pytest.mark.parametrize("output", [
    pytest.param(b"garbage\n", id="no-echo"),
    pytest.param(b"debugfs: ls -p <2>\n\n/2/040755/0/0/.//\n\n", id="record-outside-a-listing"),
    pytest.param(b"debugfs: ls -p <2>\ndebugfs: ls -p <3>\n\n", id="listing-not-closed"),
    pytest.param(b"debugfs: ls -p <2>\n/2/040755/0/0/.//\n", id="unterminated"),
    pytest.param(b"debugfs: ls -p <2>\n/2/040755/0/0/./\n\n", id="short-record"),
    pytest.param(b"debugfs: ls -p <2>\n/x/040755/0/0/.//\n\n", id="bad-inode"),
])
def test_parse_ls_p_refuses_anything_else(output: bytes) -> None:
    with pytest.raises(ToolError):
        parse_ls_p(output)


def test_list_directories_on_a_real_tree_with_hostile_names(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    names = [b"new\nline", b"x\ndebugfs: ls -p <2>\n", b"/2/040755/0/0/.//".replace(b"/", b"|"),
             b"\xff\xfe", b"n" * 255, b'q"uote', b"sp ace"]
    for name in names:
        (staging / "sub" / os.fsdecode(name)).write_bytes(name)
    image = mkfs(tmp_path, staging)
    root = list_directories(image, [2], tmp_path)
    sub = next(r for r in root[2] if r.name == b"sub")
    listing = list_directories(image, [2, sub.ino], tmp_path)
    assert {r.name for r in listing[2]} == {b"lost+found", b"sub"}
    assert sorted((r.name, r.size) for r in listing[sub.ino]) == \
        sorted((n, len(n)) for n in names)


def test_list_directories_refuses_a_non_directory(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "file").write_bytes(b"x")
    image = mkfs(tmp_path, staging)
    ino = next(r.ino for r in list_directories(image, [2], tmp_path)[2] if r.name == b"file")
    with pytest.raises(ToolError):
        list_directories(image, [ino], tmp_path)


def test_directory_listing_lists_in_one_run_and_refuses_a_non_directory(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "file").write_bytes(b"abc")
    image = mkfs(tmp_path, staging)
    root = DirectoryListing(image, [2], tmp_path).result()
    assert root is not None
    sub = int(next(r[0] for r in root[2] if r[4] == b"sub"))
    listings = DirectoryListing(image, [2, sub], tmp_path).result()
    assert listings is not None and listings.keys() == {2, sub}
    assert [(r[4], r[5]) for r in listings[sub]] == [(b".", b""), (b"..", b""), (b"file", b"3")]
    file_ino = int(listings[sub][2][0])
    assert DirectoryListing(image, [2, file_ino], tmp_path).result() is None
    assert DirectoryListing(image, [2, 200], tmp_path).result() is None    # unused inode
