"""Registry settings that come from the environment rather than images.toml.

A CI job points the unchanged ``images.toml`` at its own pull-through cache
with one variable::

    ROOTFS_MIRRORS="docker.io=mirror.ci:5000,backup.ci:5000;ghcr.io=mirror.ci:5001"

Registries are separated by ``;`` or whitespace, mirrors of one registry by
``,``. Environment mirrors are tried before the manifest's own. A mirror that
is not on loopback and speaks plain HTTP must be named in
``ROOTFS_INSECURE_REGISTRIES`` (comma separated hosts), as a manifest would
say ``insecure = true``.

Nothing here is trusted: every host is checked like a manifest value, and a
malformed variable is a ManifestError naming the variable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pipeline.errors import ManifestError

__all__ = ["MIRRORS_VAR", "INSECURE_VAR", "MIRRORS_ONLY_VAR", "parse_mirrors_env",
           "parse_insecure_env", "parse_mirrors_only_env", "check_host"]

MIRRORS_VAR = "ROOTFS_MIRRORS"
INSECURE_VAR = "ROOTFS_INSECURE_REGISTRIES"
MIRRORS_ONLY_VAR = "ROOTFS_MIRRORS_ONLY"
_YES = ("1", "true", "yes", "on")
_NO = ("", "0", "false", "no", "off")

# host[:port], DNS names or IPv4 or bracketed IPv6 (distribution reference grammar).
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)


def check_host(value: str) -> str | None:
    """Return why ``value`` is not a registry host[:port], or None when it is."""
    if "://" in value:
        return "give a host[:port] without a scheme (plain HTTP is the `insecure` setting)"
    if "/" in value:
        return "give a host[:port] without a path; a mirror serves the same repository names"
    if not _HOST.match(value):
        return "expected a registry host[:port] such as 'mirror.internal:5000'"
    port = value.rpartition(":")[2] if not value.endswith("]") else ""
    if port.isdigit() and not 0 < int(port) < 65536:
        return "the port must be between 1 and 65535"
    return None


def _where(var: str) -> str:
    return f"environment variable {var}"


def parse_mirrors_env(environ: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """``ROOTFS_MIRRORS`` as {registry: (mirror, ...)}; empty when unset."""
    raw = environ.get(MIRRORS_VAR, "").strip()
    mirrors: dict[str, tuple[str, ...]] = {}
    for item in re.split(r"[;\s]+", raw) if raw else ():
        if not item:
            continue
        registry, sep, hosts = item.partition("=")
        if not sep or not registry or not hosts:
            raise ManifestError(
                f"entry {item!r} is not 'registry=mirror[,mirror...]', e.g. "
                "'docker.io=mirror.internal:5000'", path=_where(MIRRORS_VAR))
        for host in (registry, *hosts.split(",")):
            reason = check_host(host)
            if reason is not None:
                raise ManifestError(f"host {host!r} in entry {item!r}: {reason}",
                                    path=_where(MIRRORS_VAR))
        mirrors[registry] = mirrors.get(registry, ()) + tuple(hosts.split(","))
    return mirrors


def parse_insecure_env(environ: Mapping[str, str]) -> frozenset[str]:
    """``ROOTFS_INSECURE_REGISTRIES`` as a set of hosts; empty when unset."""
    raw = environ.get(INSECURE_VAR, "").strip()
    hosts = [h for h in re.split(r"[,;\s]+", raw) if h] if raw else []
    for host in hosts:
        reason = check_host(host)
        if reason is not None:
            raise ManifestError(f"host {host!r}: {reason}", path=_where(INSECURE_VAR))
    return frozenset(hosts)


def parse_mirrors_only_env(environ: Mapping[str, str]) -> bool | frozenset[str]:
    """``ROOTFS_MIRRORS_ONLY``: True for every registry (``1``), else the registry hosts
    listed (comma separated) that must never be asked themselves; empty when unset."""
    raw = environ.get(MIRRORS_ONLY_VAR, "").strip()
    if raw.lower() in _YES:
        return True
    if raw.lower() in _NO:
        return frozenset()
    hosts = [h for h in re.split(r"[,;\s]+", raw) if h]
    for host in hosts:
        reason = check_host(host)
        if reason is not None:
            raise ManifestError(f"host {host!r}: {reason}; or give 1 for every registry",
                                path=_where(MIRRORS_ONLY_VAR))
    return frozenset(hosts)
