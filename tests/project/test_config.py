"""images.toml parsing and validation: every error names file, line, image, key and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pipeline.errors import ManifestError
from pipeline.ext4.options import Ext4Options
from pipeline.oci.platform import Platform
from pipeline.project.config import load_manifest, parse_manifest
from pipeline.project.config.source import SourceLines

GOOD = """\
[settings]
platform   = "linux/amd64"
output_dir = "images"
cache_dir  = "/var/cache/rootfs"
jobs       = 8

[registries."registry.local:5000"]
insecure = true

[registries."docker.io"]
mirrors = ["mirror.internal:5000", "10.0.0.2:5000"]

[images.alpine]
ref = "alpine:3.20"

[images.debian]
ref      = "debian:bookworm-slim"
platform = "linux/arm64"
size     = "1GiB"
label    = "rootfs"

[images.tiny]
ref = "registry.local:5000/tools/tiny@sha256:%s"
headroom = "20%%"

[images.tuned]
ref = "busybox"
inode_size = 128
journal = false
features = ["large_dir", "^metadata_csum"]
reserved_percent = 5
builder = "mkfs"
""" % ("a" * 64)


def parse(text: str, environ: dict[str, str] | None = None):
    return parse_manifest(textwrap.dedent(text), Path("/proj/images.toml"), environ=environ)


def test_settings_builder_is_every_images_default_unless_it_names_one() -> None:
    m = parse('[settings]\nbuilder = "mkfs"\n[images.a]\nref = "alpine"\n'
              '[images.b]\nref = "alpine"\nbuilder = "native"\n')
    assert m.settings.builder == "mkfs"
    assert [spec.ext4.builder for spec in m.images] == ["mkfs", "native"]


def test_good_manifest_every_field() -> None:
    m = parse(GOOD)
    assert m.settings.platform == Platform("linux", "amd64")
    assert m.settings.output_dir == Path("/proj/images")
    assert m.settings.cache_dir == Path("/var/cache/rootfs")
    assert m.settings.jobs == 8
    assert m.lock_path == Path("/proj/images.lock.json")
    assert [i.name for i in m.images] == ["alpine", "debian", "tiny", "tuned"]
    alpine, debian, tiny, tuned = m.images
    assert (alpine.ref.registry, alpine.ref.repository, alpine.ref.tag) == (
        "docker.io", "library/alpine", "3.20")
    assert alpine.ref_text == "alpine:3.20"
    assert alpine.platform == Platform("linux", "amd64")
    assert (alpine.ext4, alpine.line) == (Ext4Options(), 13)
    assert debian.platform == Platform("linux", "arm64")
    assert debian.ext4 == Ext4Options(size=1 << 30, label="rootfs")
    assert tiny.ref.digest is not None
    assert tiny.ext4 == Ext4Options(headroom="20%")
    assert tuned.ext4 == Ext4Options(inode_size=128, journal=False, reserved_percent=5,
                                     features=("large_dir", "^metadata_csum"),
                                     builder="mkfs")
    assert m.settings.builder == "native" and alpine.ext4.builder == "native"
    assert m.insecure_hosts == frozenset({"registry.local:5000"})
    assert m.mirrors_for("docker.io") == ("mirror.internal:5000", "10.0.0.2:5000")
    assert m.mirrors_for("quay.io") == ()


def test_an_old_derive_key_loads_with_one_warning_naming_file_and_line() -> None:
    # Derived builds are gone; a manifest written for them must still load, unchanged.
    text = ('[images.a]\nref = "alpine"\nderive = false\n\n'
            '[images.b]\nref = "alpine"\nbuilder = "mkfs"\nderive = true\n\n'
            '[images.c]\nref = "alpine"\n\n[images]\nd = { ref = "alpine", derive = 1 }\n')
    with capture_logs() as logs:
        m = parse(text)
    assert [spec.ext4 for spec in m.images] == [Ext4Options(), Ext4Options(builder="mkfs"),
                                                Ext4Options(), Ext4Options()]
    assert [(e["log_level"], e["event"], e["file"], e["image"], e["key"]) for e in logs] == [
        ("warning", "config.ignored_key", f"/proj/images.toml:{line}", image, "derive")
        for image, line in (("a", 3), ("b", 8), ("d", 14))]
    assert logs[0]["reason"] == ("`derive` no longer has an effect (derived builds were "
                                 "removed, a full build being as fast); remove it")


def test_defaults_are_relative_to_the_manifest() -> None:
    m = parse('[images.a]\nref = "alpine"\n')
    assert m.settings.output_dir == Path("/proj/out")
    assert m.settings.cache_dir == Path("/proj/.cache")
    assert m.settings.jobs == 4
    assert m.settings.platform == Platform("linux", "amd64")
    assert m.images[0].ref.tag == "latest"


def test_environment_mirrors_come_first_and_insecure_hosts_are_added() -> None:
    env = {"ROOTFS_MIRRORS": "docker.io=127.0.0.1:5000,cache.ci:5000; quay.io=q.ci",
           "ROOTFS_INSECURE_REGISTRIES": "cache.ci:5000"}
    m = parse(GOOD, environ=env)
    assert m.mirrors_for("docker.io") == (
        "127.0.0.1:5000", "cache.ci:5000", "mirror.internal:5000", "10.0.0.2:5000")
    assert m.mirrors_for("quay.io") == ("q.ci",)
    assert m.insecure_hosts == frozenset({"registry.local:5000", "cache.ci:5000"})


def test_environment_is_ignored_unless_given() -> None:
    assert parse(GOOD).mirrors_for("quay.io") == ()


@pytest.mark.parametrize("env, message", [
    pytest.param({"ROOTFS_MIRRORS": "docker.io"},
                 "environment variable ROOTFS_MIRRORS: entry 'docker.io' is not "
                 "'registry=mirror[,mirror...]', e.g. 'docker.io=mirror.internal:5000'",
                 id="mirror-without-equals"),
    pytest.param({"ROOTFS_MIRRORS": "docker.io=http://m:5000"},
                 "environment variable ROOTFS_MIRRORS: host 'http://m:5000' in entry "
                 "'docker.io=http://m:5000': give a host[:port] without a scheme (plain HTTP "
                 "is the `insecure` setting)", id="mirror-with-scheme"),
    pytest.param({"ROOTFS_INSECURE_REGISTRIES": "m:99999"},
                 "environment variable ROOTFS_INSECURE_REGISTRIES: host 'm:99999': the port "
                 "must be between 1 and 65535", id="insecure-bad-port"),
])
def test_bad_environment(env: dict[str, str], message: str) -> None:
    with pytest.raises(ManifestError) as exc:
        parse(GOOD, environ=env)
    assert str(exc.value) == message


# Each case: manifest text, then the exact message (path and line included).
BAD = [
    pytest.param('[images.a]\nref = "alpine\n',
                 "/proj/images.toml:2: invalid TOML: Illegal character '\\n'",
                 id="syntax-error"),
    pytest.param('[images.a]\nref = "alpine"\nfeatures = [\n',
                 "/proj/images.toml:3: invalid TOML: Invalid value",
                 id="syntax-error-at-end-of-file"),
    pytest.param('[images.a]\nref = "alpine"\n\n[images.a]\nref = "busybox"\n',
                 "/proj/images.toml:4: image 'a' is declared twice; image names must be unique",
                 id="duplicate-name"),
    pytest.param('[images.a]\nref = "alpine"\n[images.A]\nref = "busybox"\n',
                 "/proj/images.toml:3: image 'A': image names 'a' and 'A' differ only in case; "
                 "their output files would collide", id="duplicate-name-by-case"),
    pytest.param('[images.a]\nref = "alpine"\nszie = "1GiB"\n',
                 "/proj/images.toml:3: image 'a': unknown key 'szie' (did you mean 'size'?); "
                 "allowed: builder, config_path, features, headroom, inode_size, journal, "
                 "label, platform, publish, ref, reserved_percent, size", id="unknown-image-key"),
    pytest.param('[setings]\njobs = 2\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:1: unknown key 'setings' (did you mean 'settings'?); "
                 "allowed: cache, images, registries, settings", id="unknown-top-level-table"),
    pytest.param('[settings]\njob = 2\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: unknown key 'job' (did you mean 'jobs'?); "
                 "allowed: builder, cache_dir, jobs, output_dir, platform", id="unknown-setting"),
    pytest.param('[registries."docker.io"]\nmirror = ["m:5000"]\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: unknown key 'mirror' (did you mean 'mirrors'?); "
                 "allowed: insecure, mirrors, mirrors_only", id="unknown-registry-key"),
    pytest.param('[registries."docker.io"]\nmirrors_only = "yes"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `mirrors_only` must be true or false, got string 'yes'",
                 id="mirrors-only-not-bool"),
    pytest.param('[images.a]\nref = "Alpine:3.20"\n',
                 "/proj/images.toml:2: image 'a': bad `ref`: invalid image reference "
                 "'Alpine:3.20': repository name 'library/Alpine' must be lowercase",
                 id="bad-reference-uppercase"),
    pytest.param('[images.a]\nref = "alpine:"\n',
                 "/proj/images.toml:2: image 'a': bad `ref`: invalid image reference "
                 "'alpine:': empty tag after ':'", id="bad-reference-empty-tag"),
    pytest.param('[images.a]\nref = 3\n',
                 "/proj/images.toml:2: image 'a': `ref` must be a string, got integer 3",
                 id="ref-not-a-string"),
    pytest.param('[images.a]\nplatform = "linux/amd64"\n',
                 "/proj/images.toml:1: image 'a': missing `ref`, the image reference, e.g. "
                 'ref = "alpine:3.20"', id="missing-ref"),
    pytest.param('[images.a]\nref = "alpine"\nplatform = "linux/amd46"\n',
                 "/proj/images.toml:3: image 'a': bad `platform` 'linux/amd46': unknown "
                 "platform: architecture 'amd46' is not one of 386, amd64, arm, arm64, "
                 "loong64, mips, mips64, mips64le, mipsle, ppc64, ppc64le, riscv64, s390x",
                 id="unknown-platform-arch"),
    pytest.param('[images.a]\nref = "alpine"\nplatform = "windows/amd64"\n',
                 "/proj/images.toml:3: image 'a': bad `platform` 'windows/amd64': unknown "
                 "platform: operating system 'windows' cannot boot a Linux microVM; use "
                 "'linux/<architecture>'", id="unknown-platform-os"),
    pytest.param('[images.a]\nref = "alpine"\nplatform = "linux"\n',
                 "/proj/images.toml:3: image 'a': invalid platform 'linux': give both os and "
                 "architecture, e.g. 'linux/amd64'", id="platform-without-arch"),
    pytest.param('[settings]\nplatform = "linux/arm/v7/x"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: invalid platform 'linux/arm/v7/x': expected "
                 "'os/arch[/variant]' with letters, digits, '_', '.' or '-' in each part",
                 id="settings-platform-four-parts"),
    pytest.param('[images.a]\nref = "alpine"\nsize = 1024\n',
                 "/proj/images.toml:3: image 'a': `size` must be \"auto\" or a string such as "
                 "\"2GiB\", got integer 1024",
                 id="size-not-a-string"),
    pytest.param('[images.a]\nref = "alpine"\nsize = "1GiB"\nheadroom = "10%"\n',
                 "/proj/images.toml:4: image 'a': `headroom` applies only to size = \"auto\"; "
                 "remove it or the fixed size '1GiB'", id="headroom-with-fixed-size"),
    pytest.param('[images.a]\nref = "alpine"\nlabel = "a-label-that-is-too-long"\n',
                 "/proj/images.toml:3: image 'a': bad `label`: invalid label "
                 "'a-label-that-is-too-long': expected at most 16 bytes without control "
                 "characters", id="label-too-long"),
    pytest.param('[images.a]\nref = "alpine"\njournal = "no"\n',
                 "/proj/images.toml:3: image 'a': `journal` must be true or false, got string "
                 "'no'", id="journal-not-bool"),
    pytest.param('[images.a]\nref = "alpine"\nbuilder = "mke2fs"\n',
                 "/proj/images.toml:3: image 'a': bad `builder`: invalid builder 'mke2fs': "
                 'expected "native" or "mkfs"', id="builder-unknown"),
    pytest.param('[images.a]\nref = "alpine"\nbuilder = true\n',
                 "/proj/images.toml:3: image 'a': `builder` must be one of \"native\", "
                 '"mkfs", got boolean True', id="builder-not-string"),
    pytest.param('[settings]\nbuilder = "debugfs"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `builder` must be one of \"native\", \"mkfs\", got "
                 "string 'debugfs'", id="settings-builder-unknown"),
    pytest.param('[images.a]\nref = "alpine"\ninode_size = 300\n',
                 "/proj/images.toml:3: image 'a': bad `inode_size`: invalid inode size 300: "
                 "expected one of 128, 256, 512, 1024", id="bad-inode-size"),
    pytest.param('[images.a]\nref = "alpine"\nfeatures = ["casefold"]\n',
                 "/proj/images.toml:3: image 'a': bad `features`: unsupported ext4 feature "
                 "'casefold': expected one of 64bit, dir_index, dir_nlink, extra_isize, flex_bg, "
                 "huge_file, large_dir, metadata_csum, metadata_csum_seed, resize_inode, "
                 "optionally with '^'", id="unsupported-feature"),
    pytest.param('[images.a]\nref = "alpine"\nsize = "1000000"\n',
                 "/proj/images.toml:3: image 'a': bad `size`: invalid size '1000000': it must be "
                 "a multiple of 4 KiB", id="size-not-block-multiple"),
    pytest.param('[images."../etc"]\nref = "alpine"\n',
                 "/proj/images.toml:1: image name '../etc' is not a safe file name: use 1 to "
                 "64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                 id="name-traversal"),
    pytest.param('[images."a:b"]\nref = "alpine"\n',
                 "/proj/images.toml:1: image name 'a:b' is not a safe file name: use 1 to 64 "
                 "letters, digits, '.', '_' or '-', starting with a letter or digit",
                 id="name-with-task-separator"),
    pytest.param('[images.".hidden"]\nref = "alpine"\n',
                 "/proj/images.toml:1: image name '.hidden' is not a safe file name: use 1 to "
                 "64 letters, digits, '.', '_' or '-', starting with a letter or digit",
                 id="name-hidden"),
    pytest.param('[settings]\njobs = 0\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `jobs` must be an integer from 1 to 64, got integer 0",
                 id="jobs-zero"),
    pytest.param('[settings]\njobs = true\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `jobs` must be an integer from 1 to 64, got boolean True",
                 id="jobs-bool"),
    pytest.param('[settings]\ncache_dir = "out/cache"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `cache_dir` '/proj/out/cache' is inside `output_dir`"
                 " '/proj/out'; give them separate directories (gc and builds would remove"
                 " each other's files)", id="cache-inside-output"),
    pytest.param('[settings]\noutput_dir = ".cache/out"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `output_dir` '/proj/.cache/out' is inside `cache_dir`"
                 " '/proj/.cache'; give them separate directories (gc and builds would remove"
                 " each other's files)", id="output-inside-cache"),
    pytest.param('[settings]\ncache_dir = "."\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `cache_dir` '/proj' holds the manifest's own directory"
                 " '/proj', which gc would sweep; use a dedicated directory such as \".cache\"",
                 id="cache-is-the-project"),
    pytest.param('[settings]\ncache_dir = ".."\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `cache_dir` '/' holds the manifest's own directory"
                 " '/proj', which gc would sweep; use a dedicated directory such as \".cache\"",
                 id="cache-above-the-project"),
    pytest.param('[settings]\noutput_dir = "."\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `output_dir` is the manifest's own directory '/proj'; an"
                 " image's files could replace images.toml or its lock: use a directory such as"
                 " \"out\"", id="output-is-the-project"),
    pytest.param('[settings]\ncache_dir = "out"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `output_dir` and `cache_dir` must be different "
                 "directories, both are '/proj/out'", id="same-dirs"),
    pytest.param('[registries."docker.io"]\nmirrors = "m:5000"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `mirrors` must be an array of host[:port] strings, got "
                 "string 'm:5000'", id="mirrors-not-array"),
    pytest.param('[registries."docker.io"]\nmirrors = ["https://m/x"]\n[images.a]\nref = "a"\n',
                 "/proj/images.toml:2: mirror 'https://m/x': give a host[:port] without a "
                 "scheme (plain HTTP is the `insecure` setting)", id="mirror-with-scheme"),
    pytest.param('[registries."docker.io"]\ninsecure = "yes"\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:2: `insecure` must be true or false, got string 'yes'",
                 id="insecure-not-bool"),
    pytest.param('[registries."a b"]\ninsecure = true\n[images.a]\nref = "alpine"\n',
                 "/proj/images.toml:1: registry name 'a b': expected a registry host[:port] "
                 "such as 'mirror.internal:5000'", id="bad-registry-name"),
    pytest.param('[settings]\njobs = 2\n',
                 "/proj/images.toml: no images declared; add a table such as [images.alpine] "
                 'with ref = "alpine:3.20"', id="no-images"),
    pytest.param('images = ["alpine"]\n',
                 "/proj/images.toml:1: `images` must be a table, got array ['alpine']",
                 id="images-not-a-table"),
    pytest.param('[images]\na = "alpine"\n',
                 "/proj/images.toml:2: image 'a': `images.a` must be a table, got string "
                 "'alpine'", id="image-not-a-table"),
    pytest.param('[images]\na = { ref = "alpine", sise = "1G" }\n',
                 "/proj/images.toml:2: image 'a': unknown key 'sise' (did you mean 'size'?); "
                 "allowed: builder, config_path, features, headroom, inode_size, journal, "
                 "label, platform, publish, ref, reserved_percent, size",
                 id="inline-table-unknown-key"),
]


@pytest.mark.parametrize("text, message", BAD)
def test_bad_manifest(text: str, message: str) -> None:
    with pytest.raises(ManifestError) as exc:
        parse(text)
    assert str(exc.value) == message


@pytest.mark.parametrize("size", ["lots", "-1GiB", "1 parsec"])
def test_bad_size_names_line_image_and_key(size: str) -> None:
    with pytest.raises(ManifestError) as exc:
        parse(f'[images.a]\nref = "alpine"\nsize = "{size}"\n')
    assert str(exc.value).startswith(
        f"/proj/images.toml:3: image 'a': bad `size`: invalid size {size!r}: ")
    assert "expected" in str(exc.value)
    assert repr(size) in str(exc.value)
    assert exc.value.image == "a" and exc.value.key == "size" and exc.value.line == 3


def test_load_manifest_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as exc:
        load_manifest(tmp_path / "missing.toml")
    assert str(exc.value) == (f"{tmp_path}/missing.toml: file not found; create it (see "
                              "README.md, 'The manifest') or pass manifest=<path>")
    bad = tmp_path / "latin1.toml"
    bad.write_bytes(b'[images.a]\nref = "alpine"\nlabel = "\xe9"\n')
    with pytest.raises(ManifestError) as exc:
        load_manifest(bad)
    assert str(exc.value) == f"{bad}:3: not valid UTF-8 (TOML files are UTF-8)"


def test_load_manifest_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.toml").write_text('[images.a]\nref = "alpine"\n')
    monkeypatch.chdir(tmp_path)
    m = load_manifest("sub/x.toml")
    assert m.path == tmp_path / "sub" / "x.toml"
    assert m.lock_path == tmp_path / "sub" / "x.lock.json"
    assert m.settings.cache_dir == tmp_path / "sub" / ".cache"


def test_source_lines_tables_dotted_quoted_inline_and_multiline() -> None:
    text = textwrap.dedent('''\
        # comment = not a key
        [settings]
        jobs = 2
        [registries."docker.io"]
        mirrors = ["a:1"]
        [images]
        alpine.ref = "alpine"
        "odd.name" = { ref = "busybox", size = "1GiB" }
        note = """
        fake = 1
        """
        after = 1
        ''')
    lines = SourceLines.from_text(text)
    assert lines.line("settings", "jobs") == 3
    assert lines.line("registries", "docker.io", "mirrors") == 5
    assert lines.line("images", "alpine", "ref") == 7
    assert lines.line("images", "alpine") == 7
    assert lines.line("images", "odd.name", "size") == 8
    assert lines.line("images", "fake") == 6  # inside a string: falls back to the table
    assert lines.line("images", "after") == 12
    assert lines.line("nowhere") is None
