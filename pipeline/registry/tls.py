"""The registry client's TLS context: trust loaded at the first TLS handshake, not before.

httpx builds its verifying context when a client is made, and loading the CA
bundle is most of that (~30 ms of a cold build's critical path here, on every
run): a run against loopback or plain-http registries never needs it. This
context verifies exactly as httpx's default one does (``create_ssl_context``
of httpx 0.28: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else certifi's
bundle; hostname checked, certificate required; ``SSLKEYLOGFILE`` honoured)
but reads the trust store only when a socket is first wrapped in TLS. Until
then it trusts nothing, so no handshake can succeed without the store loaded.
"""

from __future__ import annotations

import os
import ssl
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["DeferredTrustContext", "trust_locations"]


def trust_locations(environ: Mapping[str, str]) -> dict[str, str]:
    """What the trust store is loaded from, as httpx chooses it (``trust_env``)."""
    if environ.get("SSL_CERT_FILE"):
        return {"cafile": environ["SSL_CERT_FILE"]}
    if environ.get("SSL_CERT_DIR"):
        return {"capath": environ["SSL_CERT_DIR"]}
    import certifi  # httpx's own dependency

    return {"cafile": certifi.where()}


class DeferredTrustContext(ssl.SSLContext):
    """A client context (hostname checked, certificate required) whose trust store is
    loaded once, by the first ``wrap_socket``/``wrap_bio``, from ``trust_locations``."""

    # ssl.SSLContext is made by __new__ from the protocol alone: ``create`` sets the rest.
    _trust_lock: threading.Lock
    _trust_loaded: bool
    _environ: Mapping[str, str]

    @classmethod
    def create(cls, environ: Mapping[str, str] | None = None) -> DeferredTrustContext:
        """A new context; ``environ`` (default: the process's, read at the first
        handshake) says where the trust store is."""
        ctx = cls(ssl.PROTOCOL_TLS_CLIENT)   # check_hostname and CERT_REQUIRED by default
        ctx._trust_lock = threading.Lock()
        ctx._trust_loaded = False
        ctx._environ = os.environ if environ is None else environ
        keylog = ctx._environ.get("SSLKEYLOGFILE")   # as create_default_context honours it
        if keylog:
            ctx.keylog_filename = keylog
        return ctx

    @property
    def trust_loaded(self) -> bool:
        return self._trust_loaded

    def load_trust(self) -> None:
        """Load the trust store now, unless loaded already."""
        if self._trust_loaded:
            return
        with self._trust_lock:
            if not self._trust_loaded:
                self.load_verify_locations(**trust_locations(self._environ))
                self._trust_loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.load_trust()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.load_trust()
        return super().wrap_bio(*args, **kwargs)
