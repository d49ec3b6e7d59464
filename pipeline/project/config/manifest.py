"""images.toml: parsing and validation into frozen values.

Every key is checked; an unknown key is an error (with a suggestion when it is
a near miss), never silently ignored; a key only earlier versions used
(``IGNORED_IMAGE_KEYS``) loads with one warning naming its file and line. Every
error is a ManifestError that names the file, the line when it can be found,
the image, the offending key or value, and what is allowed. Nothing in the
file is trusted: image names become file and task names, so they are
restricted to a safe alphabet; references, platforms and sizes go through
their own parsers.

Relative ``output_dir`` and ``cache_dir`` are relative to the manifest's
directory, so a manifest, its lock file and its outputs travel together.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from pipeline.errors import ManifestError, PipelineError
from pipeline.ext4.builder import BUILDERS, DEFAULT_BUILDER
from pipeline.ext4.options import Ext4Options
from pipeline.layers.configfile import check_config_path
from pipeline.oci.platform import DEFAULT_PLATFORM, Platform, parse_platform
from pipeline.oci.reference import ImageRef
from pipeline.oci.resolved import ImageSource, parse_source
from pipeline.project.config.checker import Checker, kind_of
from pipeline.project.config.directories import overlap
from pipeline.project.config.environment import (
    check_host,
    parse_insecure_env,
    parse_mirrors_env,
    parse_mirrors_only_env,
)
from pipeline.project.config.remote import (
    CACHE_KEYS,
    RemoteCache,
    apply_remote_env,
    cache_from_table,
    parse_publish,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ImageSpec", "Manifest", "RegistrySettings", "Settings", "load_manifest",
           "parse_manifest", "lock_path_for"]

log = structlog.get_logger(__name__)

DEFAULT_OUTPUT_DIR = "out"
DEFAULT_CACHE_DIR = ".cache"
DEFAULT_JOBS = 4
# More parallel downloads than this gain nothing on one link and look like
# abuse to a public registry's rate limiter.
MAX_JOBS = 64
# An image name becomes a file name (out/<name>.ext4) and a task name
# (mkfs:<name>): no separators, no leading dot or dash, no ':' (doit's
# task/subtask separator), short enough for any file system.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# A manifest larger than this is not a hand-written list of images.
MANIFEST_MAX_BYTES = 1 << 20

TOP_KEYS = ("cache", "images", "registries", "settings")
SETTINGS_KEYS = ("builder", "cache_dir", "jobs", "output_dir", "platform")
REGISTRY_KEYS = ("insecure", "mirrors", "mirrors_only")
# ext4 keys map one to one onto Ext4Options fields (ext4options.py checks values).
EXT4_KEYS = ("builder", "features", "headroom", "inode_size", "journal", "label",
             "reserved_percent", "size")
# Keys that once had an effect, and why they no longer do: older files still load.
IGNORED_IMAGE_KEYS = {
    "derive": "derived builds were removed, a full build being as fast",
}
IMAGE_KEYS = tuple(sorted(("config_path", "platform", "publish", "ref") + EXT4_KEYS))
# The TOML type each ext4 key must have, and how to say it.
_BUILDER_WANTED = "one of " + ", ".join(f'"{b}"' for b in BUILDERS)
_EXT4_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "builder": ((str,), _BUILDER_WANTED),
    "features": ((list,), "an array of feature names such as [\"large_dir\"]"),
    "headroom": ((str,), "a string such as \"20%\" or \"256MiB\""),
    "inode_size": ((int,), "an integer (128, 256, 512 or 1024)"),
    "journal": ((bool,), "true or false"),
    "label": ((str,), "a string of at most 16 bytes"),
    "reserved_percent": ((int, float), "a number from 0 to 50"),
    "size": ((str,), "\"auto\" or a string such as \"2GiB\""),
}
# A root filesystem for a Linux microVM: other operating systems make no sense,
# and an architecture outside Go's list (GOARCH, what image indexes use) is a typo.
ROOTFS_OS = "linux"
KNOWN_ARCHITECTURES = ("386", "amd64", "arm", "arm64", "loong64", "mips", "mips64",
                       "mips64le", "mipsle", "ppc64", "ppc64le", "riscv64", "s390x")


@dataclass(frozen=True, slots=True)
class RegistrySettings:
    """How to reach one registry: plain HTTP allowed, its mirrors in order, and whether
    only they may be asked (air-gapped CI: never fall back to the registry itself)."""

    insecure: bool = False
    mirrors: tuple[str, ...] = ()
    mirrors_only: bool = False


@dataclass(frozen=True, slots=True)
class Settings:
    platform: Platform
    output_dir: Path
    cache_dir: Path
    jobs: int
    builder: str = DEFAULT_BUILDER
    """The ext4 builder of every image that does not name one (``ext4.builder``)."""


@dataclass(frozen=True, slots=True)
class ImageSpec:
    """One ``[images.<name>]`` table, validated."""

    name: str
    ref: ImageSource
    """A registry reference, or a local layout or archive (``oci:``, ``oci-archive:``...)."""
    ref_text: str
    """The reference exactly as written: what the lock file is matched against."""
    platform: Platform
    ext4: Ext4Options
    line: int | None = None
    config_path: str | None = None
    """Where the runtime config is also written into the image (absolute), if anywhere."""
    publish: ImageRef | None = None
    """Where the built image is pushed as an artifact (``registry/repository:tag``)."""


@dataclass(frozen=True, slots=True)
class Manifest:
    path: Path
    settings: Settings
    images: tuple[ImageSpec, ...]
    registries: Mapping[str, RegistrySettings] = field(default_factory=dict)
    remote: RemoteCache | None = None
    """The remote cache (``[cache] remote``, ``ROOTFS_REMOTE_CACHE``), if any."""

    @property
    def lock_path(self) -> Path:
        return lock_path_for(self.path)

    def image(self, name: str) -> ImageSpec:
        for spec in self.images:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def mirrors_for(self, registry: str) -> tuple[str, ...]:
        settings = self.registries.get(registry)
        return settings.mirrors if settings else ()

    @property
    def insecure_hosts(self) -> frozenset[str]:
        return frozenset(host for host, reg in self.registries.items() if reg.insecure)

    @property
    def mirrors_only_hosts(self) -> frozenset[str]:
        return frozenset(host for host, reg in self.registries.items() if reg.mirrors_only)


def lock_path_for(manifest: Path) -> Path:
    """``images.toml`` → ``images.lock.json`` beside it."""
    return manifest.with_name(manifest.stem + ".lock.json")


def _platform(text: str) -> Platform:
    platform = parse_platform(text)
    if platform.os != ROOTFS_OS:
        raise ValueError(f"unknown platform: operating system {platform.os!r} cannot boot a "
                         f"Linux microVM; use '{ROOTFS_OS}/<architecture>'")
    if platform.architecture not in KNOWN_ARCHITECTURES:
        raise ValueError(f"unknown platform: architecture {platform.architecture!r} is not one "
                         f"of {', '.join(KNOWN_ARCHITECTURES)}")
    return platform


def _settings(c: Checker, raw: dict[str, Any], base: Path) -> Settings:
    c.known(raw, SETTINGS_KEYS, "settings")
    platform = c.parsed(_platform, raw.get("platform", str(DEFAULT_PLATFORM)),
                        "settings", "platform")
    dirs = {}
    for key, default in (("output_dir", DEFAULT_OUTPUT_DIR), ("cache_dir", DEFAULT_CACHE_DIR)):
        text = c.string(raw.get(key, default), "settings", key)
        if not text or "\0" in text:
            raise c.fail(f"`{key}` must be a non-empty directory path, got {text!r}",
                         "settings", key)
        dirs[key] = Path(os.path.normpath(base / Path(text).expanduser()))
    jobs = raw.get("jobs", DEFAULT_JOBS)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or not 1 <= jobs <= MAX_JOBS:
        raise c.fail(f"`jobs` must be an integer from 1 to {MAX_JOBS}, got {kind_of(jobs)}",
                     "settings", "jobs")
    reason = overlap(dirs["output_dir"], dirs["cache_dir"], base)
    if reason is not None:
        raise c.fail(reason[1], "settings", reason[0])
    builder = raw.get("builder", DEFAULT_BUILDER)
    if builder not in BUILDERS:
        raise c.fail(f"`builder` must be {_BUILDER_WANTED}, got {kind_of(builder)}",
                     "settings", "builder")
    return Settings(platform=platform, jobs=jobs, builder=builder, **dirs)


def _registries(c: Checker, raw: dict[str, Any]) -> dict[str, RegistrySettings]:
    result = {}
    for host, table in raw.items():
        reason = check_host(host)
        if reason is not None:
            raise c.fail(f"registry name {host!r}: {reason}", "registries", host)
        table = c.table(table, "registries", host)
        c.known(table, REGISTRY_KEYS, "registries", host)
        insecure = table.get("insecure", False)
        if not isinstance(insecure, bool):
            raise c.fail(f"`insecure` must be true or false, got {kind_of(insecure)}",
                         "registries", host, "insecure")
        mirrors = table.get("mirrors", [])
        if not isinstance(mirrors, list):
            raise c.fail("`mirrors` must be an array of host[:port] strings, got "
                         f"{kind_of(mirrors)}", "registries", host, "mirrors")
        for mirror in mirrors:
            mirror = c.string(mirror, "registries", host, "mirrors")
            reason = check_host(mirror)
            if reason is not None:
                raise c.fail(f"mirror {mirror!r}: {reason}", "registries", host, "mirrors")
        only = table.get("mirrors_only", False)
        if not isinstance(only, bool):
            raise c.fail(f"`mirrors_only` must be true or false, got {kind_of(only)}",
                         "registries", host, "mirrors_only")
        result[host] = RegistrySettings(insecure=insecure, mirrors=tuple(mirrors),
                                        mirrors_only=only)
    return result


def _image(c: Checker, name: str, raw: object, settings: Settings) -> ImageSpec:
    if not NAME_RE.match(name):
        raise c.fail(f"image name {name!r} is not a safe file name: use 1 to 64 letters, digits, "
                     "'.', '_' or '-', starting with a letter or digit", "images", name)
    table = c.table(raw, "images", name, image=name)
    for key in sorted(IGNORED_IMAGE_KEYS.keys() & table.keys()):
        line = c.lines.line("images", name, key)
        log.warning("config.ignored_key", file=f"{c.path}:{line}" if line else str(c.path),
                    image=name, key=key,
                    reason=f"`{key}` no longer has an effect ({IGNORED_IMAGE_KEYS[key]}); "
                           "remove it")
    table = {key: value for key, value in table.items() if key not in IGNORED_IMAGE_KEYS}
    c.known(table, IMAGE_KEYS, "images", name, image=name)
    if "ref" not in table:
        raise c.fail("missing `ref`, the image reference, e.g. ref = \"alpine:3.20\"",
                     "images", name, image=name)
    where = ("images", name)
    ref_text = c.string(table["ref"], *where, "ref", image=name)
    ref = c.parsed(parse_source, ref_text, *where, "ref", image=name)
    platform = settings.platform
    if "platform" in table:
        platform = c.parsed(_platform, table["platform"], *where, "platform", image=name)
    ext4 = _ext4_options(c, table, name, settings.builder)
    config_path = None
    if "config_path" in table:
        config_path = c.parsed(check_config_path, table["config_path"], *where, "config_path",
                               image=name)
    publish = None
    if "publish" in table:
        publish = c.parsed(parse_publish, table["publish"], *where, "publish", image=name)
    return ImageSpec(name=name, ref=ref, ref_text=ref_text, platform=platform, ext4=ext4,
                     line=c.lines.line(*where), config_path=config_path, publish=publish)


def _ext4_options(c: Checker, table: dict[str, Any], name: str,
                  builder: str) -> Ext4Options:
    """Ext4Options from the image's ext4 keys (``builder`` from [settings] unless given);
    each bad value is blamed on its own key."""
    where = ("images", name)
    given: dict[str, Any] = {"builder": builder}
    for key in EXT4_KEYS:
        if key not in table:
            continue
        value = table[key]
        types, wanted = _EXT4_TYPES[key]
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise c.fail(f"`{key}` must be {wanted}, got {kind_of(value)}", *where, key,
                         image=name)
        if key == "size" and value == "auto":
            continue
        alone: dict[str, Any] = {key: value}
        try:
            Ext4Options(**alone)
        except PipelineError as err:
            raise c.fail(f"bad `{key}`: {err}", *where, key, image=name) from err
        given[key] = value
    if "headroom" in given and "size" in given:
        raise c.fail("`headroom` applies only to size = \"auto\"; remove it or the fixed "
                     f"size {given['size']!r}", *where, "headroom", image=name)
    try:
        return Ext4Options(**given)
    except PipelineError as err:
        raise c.fail(f"bad ext4 options: {err}", *where, image=name) from err


def parse_manifest(text: str, path: Path, *,
                   environ: Mapping[str, str] | None = None) -> Manifest:
    """Validate manifest source ``text`` that was read from ``path``."""
    c = Checker(path, text)
    try:
        data = tomllib.loads(text)
    except RecursionError:
        # tomllib recurses once per nested array or inline table; no real
        # manifest nests more than three levels.
        raise ManifestError("arrays or inline tables are nested too deeply to parse; a"
                            " manifest nests at most a few levels", path=str(path)) from None
    except tomllib.TOMLDecodeError as err:
        message = str(err)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(found.group(1)) if found else None
        if line is None and "(at end of document)" in message:
            line = len(text.splitlines()) or 1  # the file ended too early: blame its last line
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", message)
        duplicate = re.match(r"Cannot declare \('images', '([^']*)'\) twice", reason)
        if duplicate:
            raise ManifestError(f"image {duplicate.group(1)!r} is declared twice; image names "
                                "must be unique", path=str(path), line=line) from None
        raise ManifestError(f"invalid TOML: {reason}", path=str(path), line=line) from None
    c.known(data, TOP_KEYS)
    settings = _settings(c, c.table(data.get("settings", {}), "settings"), path.parent)
    registries = _registries(c, c.table(data.get("registries", {}), "registries"))
    cache_table = c.table(data.get("cache", {}), "cache")
    c.known(cache_table, CACHE_KEYS, "cache")
    remote = cache_from_table(cache_table, lambda message, key: c.fail(message, "cache", key))
    images_raw = c.table(data.get("images", {}), "images")
    if not images_raw:
        raise ManifestError("no images declared; add a table such as [images.alpine] with "
                            "ref = \"alpine:3.20\"", path=str(path))
    images = []
    folded: dict[str, str] = {}
    for name, raw in images_raw.items():
        spec = _image(c, name, raw, settings)
        # Output files must not collide on case-insensitive file systems either.
        other = folded.setdefault(name.lower(), name)
        if other != name:
            raise c.fail(f"image names {other!r} and {name!r} differ only in case; their "
                         "output files would collide", "images", name, image=name)
        images.append(spec)
    if environ is not None:
        registries = _apply_environment(registries, environ,
                                        {spec.ref.registry for spec in images
                                         if isinstance(spec.ref, ImageRef)})
        remote = apply_remote_env(remote, environ)
    return Manifest(path=path, settings=settings, images=tuple(images), registries=registries,
                    remote=remote)


def _apply_environment(registries: dict[str, RegistrySettings], environ: Mapping[str, str],
                       used: set[str]) -> dict[str, RegistrySettings]:
    """Environment mirrors go first (a CI cache beats the manifest's), then the manifest's;
    ``ROOTFS_MIRRORS_ONLY`` makes the registries it names (or all ``used``) mirrors-only."""
    merged = dict(registries)
    for registry, mirrors in parse_mirrors_env(environ).items():
        current = merged.get(registry, RegistrySettings())
        ordered = tuple(dict.fromkeys(mirrors + current.mirrors))
        merged[registry] = replace(current, mirrors=ordered)
    for host in parse_insecure_env(environ):
        merged[host] = replace(merged.get(host, RegistrySettings()), insecure=True)
    only = parse_mirrors_only_env(environ)
    for host in sorted(used | set(merged)) if only is True else sorted(only or ()):
        merged[host] = replace(merged.get(host, RegistrySettings()), mirrors_only=True)
    return merged


def load_manifest(path: str | os.PathLike[str], *,
                  environ: Mapping[str, str] | None = None) -> Manifest:
    """Read and validate a manifest file; ``environ`` adds mirrors (see environment.py)."""
    path = Path(os.path.abspath(path))
    try:
        with open(path, "rb") as f:
            raw = f.read(MANIFEST_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ManifestError("file not found; create it (see README.md, 'The manifest') or pass "
                            "manifest=<path>", path=str(path)) from None
    except OSError as err:
        raise ManifestError(f"cannot read: {err.strerror}", path=str(path)) from None
    if len(raw) > MANIFEST_MAX_BYTES:
        raise ManifestError(f"larger than {MANIFEST_MAX_BYTES} bytes; is this the right file?",
                            path=str(path))
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ManifestError("not valid UTF-8 (TOML files are UTF-8)", path=str(path),
                            line=line) from None
    return parse_manifest(text, path, environ=environ)
