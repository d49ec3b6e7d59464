"""Where a request may go: decided on the resolved address, never on the spelling.

A registry names hosts we then connect to: redirects (blob storage), token
realms, and through the user's configuration, mirrors. Cloud metadata
services answer on link-local addresses (169.254.169.254, fe80::/10) and a
few others; a request there from a CI machine can hand out its cloud
credentials. ``check_destination`` runs on every request the client sends
(an httpx request hook, so redirects and token requests included):

- an IP literal in any spelling a resolver accepts (``2852039166``,
  ``0xa9fea9fe``, ``169.254.43518``, ``[::ffff:169.254.169.254]``, ``0``)
  is decided on the address it denotes (``oci.reference.host_address``);
- a name is resolved first, and refused if any of its addresses is
  forbidden: the connection may use any of them.

Not defended: DNS rebinding between our lookup and httpx's own (a name
whose answer changes within a second). Closing that needs connecting to the
checked address ourselves; the resolver's cache makes the window small.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from typing import Any

from pipeline.errors import RegistryError
from pipeline.oci.reference import host_address, is_forbidden_address, is_loopback_host

__all__ = ["Resolver", "check_destination", "resolved_addresses"]

Resolver = Callable[..., Sequence[tuple[Any, ...]]]
"""``socket.getaddrinfo``'s signature; tests hand in their own."""


def resolved_addresses(host: str, resolve: Resolver = socket.getaddrinfo,
                       ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Every address ``host`` resolves to (empty when it does not resolve)."""
    literal = host_address(host)
    if literal is not None:
        return [literal]
    try:
        infos = resolve(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return []  # the connection will fail on its own, with its own message
    found = []
    for info in infos:
        ip = host_address(str(info[4][0]).split("%", 1)[0])
        if ip is not None:
            found.append(ip)
    return found


def check_destination(host: str, *, method: str, url: str,
                      resolve: Resolver = socket.getaddrinfo) -> None:
    """Raise RegistryError when ``host`` is, or resolves to, a forbidden address."""
    if is_loopback_host(host) and host_address(host) is None:
        return  # "localhost": nothing to resolve that could surprise us
    for ip in resolved_addresses(host, resolve):
        if is_forbidden_address(ip):
            shown = host if str(ip) == host.strip("[]") else f"{host} ({ip})"
            raise RegistryError(
                f"refusing a request to {shown}, a link-local, unspecified or cloud metadata"
                " address (a redirect, token realm or mirror pointing there); fix the"
                " registry or mirror setting, or report the registry",
                method=method, url=url)
