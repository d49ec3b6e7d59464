"""The harness's own small Bearer client, used to push test images.

Deliberately minimal and independent of ``pipeline.registry.auth`` (the code under
test): on a 401 with a ``Bearer`` challenge it asks the realm for a token with
HTTP Basic credentials and retries once. It reads the token response itself
rather than setting ``requires_response_body``, so streamed blobs stay
streamed.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Generator

import httpx

__all__ = ["BearerAuth", "basic_header", "parse_challenge"]

_PARAM = re.compile(r'(\w+)="([^"]*)"')


def basic_header(username: str, password: str) -> str:
    """The ``Authorization`` value for HTTP Basic (RFC 7617)."""
    raw = f"{username}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="..",service=".."`` into ("bearer", {params})."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_PARAM.findall(rest))


class BearerAuth(httpx.Auth):
    """Docker token flow with Basic credentials at the realm; caches one token per scope."""

    def __init__(self, username: str | None = None, password: str | None = None) -> None:
        self.username = username
        self.password = password
        self._tokens: dict[str, str] = {}
        self._last: str | None = None

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._last is not None:
            request.headers["Authorization"] = f"Bearer {self._last}"
        response = yield request
        challenge = response.headers.get("www-authenticate", "")
        if response.status_code != 401 or not challenge.lower().startswith("bearer"):
            return
        _, params = parse_challenge(challenge)
        key = f"{params.get('realm')}|{params.get('service')}|{params.get('scope')}"
        token = self._tokens.get(key)
        if token is None or token == self._last:
            query = {k: v for k, v in params.items() if k in ("service", "scope")}
            token_request = httpx.Request("GET", params["realm"], params=query)
            if self.username is not None and self.password is not None:
                token_request.headers["Authorization"] = basic_header(
                    self.username, self.password)
            token_response = yield token_request
            token_response.read()
            if token_response.status_code != 200:
                return
            body = token_response.json()
            token = body.get("token") or body.get("access_token")
            self._tokens[key] = token
        self._last = token
        request.headers["Authorization"] = f"Bearer {token}"
        yield request
