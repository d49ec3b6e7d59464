"""Registry authentication as an ``httpx.Auth`` flow: Bearer tokens and Basic.

On a 401 the flow reads ``WWW-Authenticate`` (RFC 9110 section 11.6.1):
- ``Basic``: retry once with the registry's credentials, then send them up
  front to that origin from then on;
- ``Bearer realm=..,service=..,scope=..`` (Docker token spec): get a token from
  the realm (GET with Basic credentials, or POST ``grant_type=refresh_token``
  for an identity token), cache it per (realm, service, scope) until
  ``expires_in`` (60 s when absent) runs out, retry; on a second 401 with
  ``error="insufficient_scope"`` and a new scope, fetch once more and retry.

Where credentials may go, and why:
- only credentials configured for the registry's own host are ever used, and
  a challenge is only answered when the 401 came from the origin of the
  request (a 401 after a redirect to blob storage is not ours to answer);
- httpx drops ``Authorization`` on cross-origin redirects (distribution spec:
  307s to blob storage must not carry registry credentials);
- the realm is another server named by the registry: it gets the registry's
  credentials only over HTTPS or on loopback. A plain-HTTP realm of an
  insecure (opted-in) registry gets an anonymous token request; an HTTPS
  registry pointing at a plain-HTTP realm, and any realm at a link-local or
  unspecified address (cloud metadata lives there), are refused outright.
- token requests never follow redirects (a 307 would replay a POSTed refresh
  token to wherever it points) and their bodies are read up to a cap.

``requires_response_body`` stays False: setting it would read every streamed
blob into memory. Token responses are fetched by ``send`` (the owning client,
called without auth) and read here. Only synchronous clients are supported.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from urllib.parse import urlencode

import httpx
import structlog

from pipeline.base.jsontext import loads_bounded
from pipeline.errors import AuthError, RegistryError
from pipeline.oci.reference import is_link_local_host, is_loopback_host
from pipeline.registry.bodies import DEFAULT_DEADLINES, Deadlines, read_capped
from pipeline.registry.credentials import Credential, CredentialSource
from pipeline.registry.retry import TEMPORARY_STATUSES, parse_retry_after, with_retry_after

__all__ = ["Challenge", "RegistryAuth", "parse_challenges", "realm_policy", "registry_of",
           "DEFAULT_TOKEN_TTL_S", "TOKEN_MAX_BYTES"]

log = structlog.get_logger(__name__)

# Docker token spec: "When omitted, [expires_in] defaults to 60 seconds."
DEFAULT_TOKEN_TTL_S = 60.0
# Renew this long before expiry so a token does not lapse in flight.
TOKEN_EXPIRY_MARGIN_S = 10.0
# A token response is a small JSON object (JWTs are a few KiB).
TOKEN_MAX_BYTES = 1024 * 1024
CLIENT_ID = "rootfs-pipeline"

# Marks "Basic credentials were sent up front" where a token would be remembered.
_BASIC = "\x00basic"

Sender = Callable[[httpx.Request], httpx.Response]


@dataclass(frozen=True, slots=True)
class Challenge:
    """One challenge from a ``WWW-Authenticate`` header; scheme lowercased."""

    scheme: str
    realm: str = ""
    service: str = ""
    scope: str = ""
    error: str = ""


def _tokenize(value: str) -> list[tuple[str, str]]:
    """Split a header into ("scheme", name) and ("param", "k=v") items."""
    items: list[tuple[str, str]] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i] in " \t,":
            i += 1
        start = i
        while i < n and value[i] not in " \t,=":
            i += 1
        word = value[start:i]
        if not word:
            break
        j = i
        while j < n and value[j] in " \t":
            j += 1
        if j < n and value[j] == "=":
            i = j + 1
            while i < n and value[i] in " \t":
                i += 1
            if i < n and value[i] == '"':
                i += 1
                chars: list[str] = []
                while i < n and value[i] != '"':
                    if value[i] == "\\" and i + 1 < n:
                        i += 1
                    chars.append(value[i])
                    i += 1
                i += 1
                items.append(("param", f"{word.lower()}={''.join(chars)}"))
            else:
                start = i
                while i < n and value[i] not in " \t,":
                    i += 1
                items.append(("param", f"{word.lower()}={value[start:i]}"))
        else:
            items.append(("scheme", word.lower()))
    return items


def parse_challenges(headers: list[str]) -> list[Challenge]:
    """All challenges in the given ``WWW-Authenticate`` header values, in order."""
    found: list[Challenge] = []
    for header in headers:
        scheme: str | None = None
        params: dict[str, str] = {}
        for kind, text in _tokenize(header):
            if kind == "scheme":
                if scheme is not None:
                    found.append(_challenge(scheme, params))
                scheme, params = text, {}
            elif scheme is not None:
                key, _, val = text.partition("=")
                params.setdefault(key, val)
        if scheme is not None:
            found.append(_challenge(scheme, params))
    return found


def _challenge(scheme: str, params: dict[str, str]) -> Challenge:
    return Challenge(scheme, params.get("realm", ""), params.get("service", ""),
                     params.get("scope", ""), params.get("error", ""))


def registry_of(url: httpx.URL) -> str:
    """The registry name of a URL as written in references: ``host[:port]``, IPv6 bracketed."""
    host = url.host
    if ":" in host:
        host = f"[{host}]"
    return f"{host}:{url.port}" if url.port is not None else host


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    default = {"http": 80, "https": 443}.get(url.scheme)
    return (url.scheme, url.host, url.port or default)


def _scope_for(path: str, method: str = "GET") -> str:
    """``repository:<name>:pull`` for /v2/<name>/(manifests|blobs)/..., else empty.

    Writes (POST, PUT, PATCH) ask for ``pull,push``: an upload also HEADs and
    mounts, and one token for both saves a round trip per request.
    """
    if not path.startswith("/v2/"):
        return ""
    for marker in ("/manifests/", "/blobs/", "/tags/"):
        name, found, _ = path[4:].rpartition(marker)
        if found and name:
            action = "pull" if method in ("GET", "HEAD") else "pull,push"
            return f"repository:{name}:{action}"
    return ""


def _basic(cred: Credential) -> str:
    raw = f"{cred.username}:{cred.password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    expires_at: float


class RegistryAuth(httpx.Auth):
    """Thread-safe auth flow shared by every request of one RegistryClient."""

    def __init__(self, credentials: CredentialSource, *, send: Sender,
                 clock: Callable[[], float] = time.monotonic,
                 deadlines: Deadlines = DEFAULT_DEADLINES) -> None:
        self._credentials = credentials
        self._deadlines = deadlines
        self._send = send
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[tuple[str, str, str], _Token] = {}
        self._fetching: dict[tuple[str, str, str], threading.Lock] = {}
        # Per origin: the last challenge seen, so later requests authenticate up front.
        self._schemes: dict[tuple[str, str, int | None], Challenge] = {}

    def has_credentials(self, registry: str) -> bool:
        return self._credentials.get(registry) is not None

    async def async_auth_flow(
            self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        raise RuntimeError("internal error: RegistryAuth supports synchronous clients only")
        yield request  # pragma: no cover

    def sync_auth_flow(
            self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        registry = registry_of(request.url)
        origin = _origin(request.url)
        scope = _scope_for(request.url.path, request.method)
        sent = self._authorize_up_front(request, origin, registry, scope)
        response = yield request
        for round_ in range(2):
            if response.status_code != 401 or _origin(response.request.url) != origin:
                return
            challenges = parse_challenges(response.headers.get_list("www-authenticate"))
            chosen = next((c for c in challenges if c.scheme == "bearer"), None) or next(
                (c for c in challenges if c.scheme == "basic"), None)
            if chosen is None:
                return
            with self._lock:
                self._schemes[origin] = chosen
            if chosen.scheme == "basic":
                cred = self._credentials.get(registry)
                if round_ > 0 or sent == _BASIC or cred is None or not (
                        cred.username or cred.password):
                    return
                request.headers["Authorization"] = _basic(cred)
            else:
                # A second 401 is worth one more token only if the registry says the
                # token lacked scope (it may name a wider one); else it is final.
                if round_ > 0 and chosen.error != "insufficient_scope":
                    return
                token = self._token(chosen, request.url, registry, chosen.scope or scope,
                                    stale=sent)
                request.headers["Authorization"] = f"Bearer {token}"
                sent = token
            response = yield request

    def _authorize_up_front(self, request: httpx.Request, origin: tuple[str, str, int | None],
                            registry: str, scope: str) -> str | None:
        with self._lock:
            known = self._schemes.get(origin)
            if known is None:
                return None
            if known.scheme == "bearer":
                token = self._tokens.get((known.realm, known.service, scope))
                if token is None or token.expires_at <= self._clock():
                    return None
                request.headers["Authorization"] = f"Bearer {token.value}"
                return token.value
        cred = self._credentials.get(registry)
        if cred is not None and (cred.username or cred.password):
            request.headers["Authorization"] = _basic(cred)
            return _BASIC
        return None

    def _token(self, challenge: Challenge, url: httpx.URL, registry: str, scope: str, *,
               stale: str | None) -> str:
        key = (challenge.realm, challenge.service, scope)
        with self._lock:
            fetch_lock = self._fetching.setdefault(key, threading.Lock())
        # One fetch per key at a time: threads that got the same 401 share a token.
        with fetch_lock:
            with self._lock:
                cached = self._tokens.get(key)
            if cached and cached.value != stale and cached.expires_at > self._clock():
                return cached.value
            token = self._fetch(challenge, url, registry, scope)
            with self._lock:
                self._tokens[key] = token
            return token.value

    def _fetch(self, challenge: Challenge, url: httpx.URL, registry: str, scope: str) -> _Token:
        realm, send_credentials = realm_policy(challenge.realm, url, registry)
        cred = self._credentials.get(registry) if send_credentials else None
        if not send_credentials and self._credentials.get(registry) is not None:
            log.warning("auth.credentials_withheld", registry=registry,
                        realm=str(realm.copy_with(query=None)))
        service = [("service", challenge.service)] if challenge.service else []
        if cred is not None and cred.identity_token:
            # Docker's OAuth2 flow (auth/oauth.md): scopes space-separated in one
            # field, and the refresh token in a form body, never in a URL that
            # could end up in a log.
            form = service + ([("scope", scope)] if scope else []) + [
                ("grant_type", "refresh_token"), ("client_id", CLIENT_ID),
                ("refresh_token", cred.identity_token)]
            request = httpx.Request("POST", realm, content=urlencode(form).encode("ascii"),
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
        else:
            # auth/token.md: one `scope` parameter per scope.
            fields: list[tuple[str, str | int | float | bool | None]] = [
                *service, *(("scope", one) for one in scope.split())]
            request = httpx.Request("GET", realm.copy_merge_params(httpx.QueryParams(fields)))
            if cred is not None:
                request.headers["Authorization"] = _basic(cred)
        return self._exchange(request, realm, registry, anonymous=cred is None)

    def _read_token_body(self, response: httpx.Response, request: httpx.Request,
                         where: str) -> bytes:
        try:
            return read_capped(response.iter_raw(), response.headers.get("content-encoding", ""),
                               TOKEN_MAX_BYTES, method=request.method, url=where,
                               what="token answer", host=request.url.netloc.decode(
                                   "ascii", "replace"), deadlines=self._deadlines)
        except RegistryError as err:
            raise AuthError(f"{where}: {err}".replace(f"{request.method} {where}: ", ""),
                            temporary=err.temporary) from None
        except httpx.TransportError as err:
            raise AuthError(f"{where}: {type(err).__name__}: {err}", temporary=True) from None

    def _exchange(self, request: httpx.Request, realm: httpx.URL, registry: str, *,
                  anonymous: bool) -> _Token:
        where = f"token server {realm.copy_with(query=None)}"
        try:
            response = self._send(request)
        except httpx.TransportError as err:
            raise AuthError(f"{where}: {type(err).__name__}: {err}", temporary=True) from None
        try:
            body = self._read_token_body(response, request, where)
        finally:
            response.close()
        status = response.status_code
        if status != 200:
            temporary = status in TEMPORARY_STATUSES
            if status in (401, 403):
                hint = (f"anonymous access was refused; run `docker login {registry}` or"
                        f" `podman login {registry}`" if anonymous else
                        f"it refused the credentials configured for {registry}; run"
                        f" `docker login {registry}` or `podman login {registry}` again")
            else:
                hint = "expected 200 with a token"
            error = AuthError(f"{where} answered {status} for {registry}: {hint}",
                              status=status, temporary=temporary)
            raise with_retry_after(error, parse_retry_after(response.headers.get("retry-after")))
        try:
            doc = loads_bounded(body)
            value = doc.get("token") or doc.get("access_token")
            ttl = doc.get("expires_in", DEFAULT_TOKEN_TTL_S)
        except (ValueError, AttributeError):
            raise AuthError(f"{where} answered for {registry} with something that is not a"
                            " JSON object") from None
        usable = isinstance(value, str) and value.isascii() and value.isprintable()
        if not usable or not value:
            raise AuthError(f"{where} answered for {registry} without a usable token")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl <= 0:
            ttl = DEFAULT_TOKEN_TTL_S
        margin = min(TOKEN_EXPIRY_MARGIN_S, ttl / 2)
        return _Token(value, self._clock() + ttl - margin)


def realm_policy(realm_text: str, url: httpx.URL, registry: str) -> tuple[httpx.URL, bool]:
    """The realm URL to ask and whether the registry's credentials may go there.

    HTTPS or loopback realms get credentials; a plain-HTTP realm of a plain-HTTP
    (opted-in insecure) registry gets an anonymous request; anything else, and
    any link-local or unspecified address, is refused.
    """
    try:
        realm = httpx.URL(realm_text)
    except httpx.InvalidURL:
        realm = httpx.URL("invalid:")
    if realm.scheme not in ("https", "http") or not realm.host:
        raise AuthError(f"{registry} sent a Bearer challenge with realm {realm_text!r:.200},"
                        " which is not an http(s) URL")
    if is_link_local_host(realm.host):
        raise AuthError(f"{registry} points its token realm at {realm.host}, a link-local or"
                        " unspecified address; refusing to send any request there")
    if realm.scheme == "https" or is_loopback_host(realm.host):
        return realm, True
    if url.scheme == "https":
        raise AuthError(f"{registry} is served over HTTPS but points its token realm at plain"
                        f" HTTP ({realm.host}); refusing the downgrade")
    return realm, False
