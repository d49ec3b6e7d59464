"""Auth flow: Bearer tokens from the real token server, Basic on htpasswd, where credentials go."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from pipeline.base.digest import parse_digest
from pipeline.errors import AuthError, RegistryError
from pipeline.oci import mediatypes as mt
from pipeline.registry.auth import (
    Challenge,
    RegistryAuth,
    parse_challenges,
    realm_policy,
    registry_of,
)
from pipeline.registry.client import RegistryClient
from pipeline.registry.credentials import Credential, DockerConfig, NoCredentials
from tests.harness.clients import Sleeps, recording_retry
from tests.harness.dockerconfig import DockerConfig as ConfigFixture
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.images import Image, file, make_image, make_layer
from tests.harness.push import push
from tests.harness.registry import Registry
from tests.harness.tokenserver import TokenServer

# -- pure parts ------------------------------------------------------------------------

CHALLENGES = [
    ("docker-hub", ['Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                    'scope="repository:library/alpine:pull"'],
     [Challenge("bearer", "https://auth.docker.io/token", "registry.docker.io",
                "repository:library/alpine:pull")]),
    ("insufficient-scope", ['Bearer realm="https://a/t",service="s",scope="repository:x:pull",'
                            'error="insufficient_scope"'],
     [Challenge("bearer", "https://a/t", "s", "repository:x:pull", "insufficient_scope")]),
    ("basic", ['Basic realm="basic-realm"'], [Challenge("basic", "basic-realm")]),
    ("case-and-spaces", ['BEARER  Realm = "https://a/t" , Service=s'],
     [Challenge("bearer", "https://a/t", "s")]),
    ("escaped-quote", [r'Bearer realm="https://a/t?x=\"y\"",service="s"'],
     [Challenge("bearer", 'https://a/t?x="y"', "s")]),
    ("two-in-one-header", ['Basic realm="r", Bearer realm="https://a/t",service="s"'],
     [Challenge("basic", "r"), Challenge("bearer", "https://a/t", "s")]),
    ("two-headers", ['Basic realm="r"', 'Bearer realm="https://a/t"'],
     [Challenge("basic", "r"), Challenge("bearer", "https://a/t")]),
    ("multiple-scopes", ['Bearer realm="https://a/t",scope="repository:a:pull repository:b:pull"'],
     [Challenge("bearer", "https://a/t", scope="repository:a:pull repository:b:pull")]),
    ("empty", [""], []),
    ("garbage", ['=,,=="'], []),
]


@pytest.mark.parametrize("headers, expected", [c[1:] for c in CHALLENGES],
                         ids=[c[0] for c in CHALLENGES])
def test_parse_challenges(headers: list[str], expected: list[Challenge]) -> None:
    assert parse_challenges(headers) == expected


HTTPS_REG = httpx.URL("https://r.example/v2/a/manifests/1")
HTTP_REG = httpx.URL("http://r.example:5000/v2/a/manifests/1")
# (id, realm, registry URL, credentials sent or the exact refusal)
REALMS = [
    ("https-other-host", "https://auth.example/token", HTTPS_REG, True),
    ("https-same-host", "https://r.example/token", HTTPS_REG, True),
    ("loopback-http", "http://127.0.0.1:9999/token", HTTPS_REG, True),
    ("localhost-http", "http://localhost:9999/token", HTTP_REG, True),
    ("insecure-registry-http-realm", "http://auth.example/token", HTTP_REG, False),
    ("https-registry-http-realm", "http://auth.example/token", HTTPS_REG,
     "r.example is served over HTTPS but points its token realm at plain HTTP (auth.example);"
     " refusing the downgrade"),
    ("metadata-service", "http://169.254.169.254/latest/meta-data", HTTP_REG,
     "r.example points its token realm at 169.254.169.254, a link-local or unspecified address;"
     " refusing to send any request there"),
    ("metadata-service-https", "https://169.254.169.254/token", HTTPS_REG,
     "r.example points its token realm at 169.254.169.254, a link-local or unspecified address;"
     " refusing to send any request there"),
    ("ipv6-link-local", "https://[fe80::1]/token", HTTPS_REG,
     "r.example points its token realm at fe80::1, a link-local or unspecified address;"
     " refusing to send any request there"),
    ("ftp", "ftp://auth.example/token", HTTPS_REG,
     "r.example sent a Bearer challenge with realm 'ftp://auth.example/token', which is not an"
     " http(s) URL"),
    ("relative", "/token", HTTPS_REG,
     "r.example sent a Bearer challenge with realm '/token', which is not an http(s) URL"),
    ("empty", "", HTTPS_REG,
     "r.example sent a Bearer challenge with realm '', which is not an http(s) URL"),
]


@pytest.mark.parametrize("realm, url, verdict", [r[1:] for r in REALMS], ids=[r[0] for r in REALMS])
def test_realm_policy(realm: str, url: httpx.URL, verdict: bool | str) -> None:
    if isinstance(verdict, bool):
        assert realm_policy(realm, url, "r.example")[1] is verdict
    else:
        with pytest.raises(AuthError) as info:
            realm_policy(realm, url, "r.example")
        assert str(info.value) == verdict


@pytest.mark.parametrize("url, name", [
    ("http://127.0.0.1:5000/v2/", "127.0.0.1:5000"), ("https://r.example/v2/", "r.example"),
    ("http://[::1]:5000/v2/", "[::1]:5000"), ("https://r.example:443/v2/", "r.example"),
])
def test_registry_of(url: str, name: str) -> None:
    assert registry_of(httpx.URL(url)) == name


# -- fixtures --------------------------------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client_with(credentials: object, sleeps: Sleeps) -> RegistryClient:
    return RegistryClient(credentials=credentials,  # type: ignore[arg-type]
                          retry=recording_retry(sleeps))


@pytest.fixture
def anonymous(sleeps: Sleeps) -> Iterator[RegistryClient]:
    with client_with(NoCredentials(), sleeps) as c:
        yield c


def small_image() -> Image:
    return make_image([make_layer([file("f", b"data\n")])])


@pytest.fixture
def public(token_registry: Registry, token_server: TokenServer, repo: str) -> Image:
    img = small_image()
    push(token_registry, repo, "v1", img)
    token_server.reset()
    return img


@pytest.fixture
def private_repo(repo: str) -> str:
    return "private/" + repo.split("/", 1)[1]


@pytest.fixture
def private(token_registry: Registry, token_server: TokenServer, private_repo: str) -> Image:
    img = small_image()
    push(token_registry, private_repo, "v1", img)
    token_server.reset()
    return img


# -- Bearer, against the real token server ------------------------------------------------

def test_anonymous_token_for_public_repo(anonymous: RegistryClient, token_registry: Registry,
                                         token_server: TokenServer, repo: str,
                                         public: Image) -> None:
    got = anonymous.get_manifest(token_registry.host, repo, "v1")
    assert got.body == public.manifest
    (request,) = token_server.requests()
    assert (request.method, request.who, request.service, request.scopes) == (
        "GET", None, token_server.service, (f"repository:{repo}:pull",))


def test_token_is_cached_per_scope(anonymous: RegistryClient, token_registry: Registry,
                                   token_server: TokenServer, repo: str, public: Image) -> None:
    anonymous.get_manifest(token_registry.host, repo, "v1")
    anonymous.head_manifest(token_registry.host, repo, "v1")
    with anonymous.open_blob(token_registry.host, repo,
                             parse_digest(public.layers[0].digest)) as blob:
        assert b"".join(blob.chunks()) == public.layers[0].data
    assert len(token_server.requests()) == 1


def test_private_repo_anonymous_is_refused(anonymous: RegistryClient, token_registry: Registry,
                                           token_server: TokenServer, private_repo: str,
                                           private: Image, sleeps: Sleeps) -> None:
    with pytest.raises(AuthError) as info:
        anonymous.get_manifest(token_registry.host, private_repo, "v1")
    assert info.value.status == 401 and not info.value.temporary
    assert str(info.value).endswith(
        f"the registry needs credentials and none are configured for {token_registry.host};"
        " run `docker login`")
    assert sleeps == []
    # One token, then one more after `insufficient_scope`, then give up.
    assert len(token_server.requests()) == 2


def test_private_repo_with_config_auths(docker_config: ConfigFixture, token_registry: Registry,
                                        token_server: TokenServer, private_repo: str,
                                        private: Image, sleeps: Sleeps) -> None:
    docker_config.add_auth(token_registry.host, "bob", "builder")
    with client_with(None, sleeps) as client:  # None: read $DOCKER_CONFIG
        assert client.get_manifest(token_registry.host, private_repo, "v1").body == private.manifest
    (request,) = token_server.requests()
    assert (request.method, request.who) == ("GET", "bob")


def test_private_repo_with_credential_helper(docker_config: ConfigFixture,
                                             token_registry: Registry,
                                             token_server: TokenServer, private_repo: str,
                                             private: Image, sleeps: Sleeps) -> None:
    helper = docker_config.helper("pipelinetest",
                                  {token_registry.host: ("alice", "wonderland")})
    docker_config.set_cred_helper(token_registry.host, "pipelinetest")
    with client_with(DockerConfig.load(), sleeps) as client:
        client.get_manifest(token_registry.host, private_repo, "v1")
        client.get_manifest(token_registry.host, private_repo, private.digest)
    assert [r.who for r in token_server.requests()] == ["alice"]
    assert [(c.action, c.input) for c in helper.calls()] == [("get", token_registry.host)]


def test_identity_token_uses_oauth_post(docker_config: ConfigFixture, token_registry: Registry,
                                        token_server: TokenServer, private_repo: str,
                                        private: Image, sleeps: Sleeps) -> None:
    refresh = token_server.issue_refresh_token("alice")
    docker_config.add_identity_token(token_registry.host, refresh, username="alice")
    with client_with(DockerConfig.load(), sleeps) as client:
        client.get_manifest(token_registry.host, private_repo, "v1")
    (request,) = token_server.requests()
    assert (request.method, request.grant, request.who, request.client_id, request.scopes) == (
        "POST", "refresh_token", "alice", "rootfs-pipeline", (f"repository:{private_repo}:pull",))


def test_wrong_password_is_a_clear_error(token_registry: Registry, token_server: TokenServer,
                                         private_repo: str, private: Image,
                                         sleeps: Sleeps) -> None:
    creds = {token_registry.host: Credential("alice", "not-her-password")}
    with client_with(type("Fixed", (), {"get": lambda self, r: creds.get(r)})(), sleeps) as c:
        with pytest.raises(AuthError) as info:
            c.get_manifest(token_registry.host, private_repo, "v1")
    message = str(info.value)
    assert message == (f"token server {token_server.realm} answered 401 for"
                       f" {token_registry.host}: it refused the credentials configured for"
                       f" {token_registry.host}; run `docker login {token_registry.host}` again")
    assert "not-her-password" not in message and sleeps == []


def test_insufficient_scope_gets_one_more_token(anonymous: RegistryClient,
                                                token_registry: Registry,
                                                token_server: TokenServer, repo: str,
                                                public: Image) -> None:
    token_server.narrow(1)  # the first token grants nothing: registry says insufficient_scope
    assert anonymous.get_manifest(token_registry.host, repo, "v1").body == public.manifest
    assert len(token_server.requests()) == 2


def test_token_server_outage_is_retried(anonymous: RegistryClient, token_registry: Registry,
                                        token_server: TokenServer, repo: str, public: Image,
                                        sleeps: Sleeps) -> None:
    token_server.fail(503, 1)
    assert anonymous.get_manifest(token_registry.host, repo, "v1").body == public.manifest
    assert [r.status for r in token_server.requests()] == [503, 200]
    assert sleeps == [0.25]


def test_token_expiry_from_expires_in(token_registry: Registry, token_server: TokenServer,
                                      repo: str, public: Image) -> None:
    token_server.expires_in = 300
    clock = Clock()
    url = f"{token_registry.url}/v2/{repo}/manifests/v1"
    with httpx.Client(headers={"Accept": mt.MANIFEST_ACCEPT}) as http:
        auth = RegistryAuth(NoCredentials(), clock=clock,
                            send=lambda r: http.send(r, follow_redirects=False, stream=True))
        assert http.get(url, auth=auth).status_code == 200
        clock.now += 289  # valid until 300 s minus a 10 s margin
        assert http.get(url, auth=auth).status_code == 200
        assert len(token_server.requests()) == 1
        clock.now += 2
        assert http.get(url, auth=auth).status_code == 200
    assert len(token_server.requests()) == 2


def test_token_without_expires_in_lasts_60s(token_registry: Registry,
                                            token_server: TokenServer, repo: str,
                                            public: Image,
                                            fault_proxy: Callable[..., FaultProxy]) -> None:
    # The token server always says expires_in; a proxy in front of it drops it.
    token_proxy = fault_proxy(f"http://127.0.0.1:{token_server.port}")
    registry_proxy = fault_proxy(token_registry)
    scope = f"repository:{repo}:pull"
    # "localhost" is another host than the registry's 127.0.0.1, as realms usually are.
    realm = f"http://localhost:{token_proxy.host.rsplit(':', 1)[1]}/token"
    registry_proxy.add(Fault.headers(www_authenticate=(
        f'Bearer realm="{realm}",service="{token_server.service}",scope="{scope}"')),
        path="/manifests/", times=None)
    real = httpx.get(token_server.realm, params={"service": token_server.service,
                                                 "scope": scope}).json()["token"]
    token_proxy.add(Fault.body(json.dumps({"token": real}).encode()), path="/token", times=None)
    clock = Clock()
    url = f"{registry_proxy.url}/v2/{repo}/manifests/v1"
    with httpx.Client(headers={"Accept": mt.MANIFEST_ACCEPT}) as http:
        auth = RegistryAuth(NoCredentials(), clock=clock,
                            send=lambda r: http.send(r, follow_redirects=False, stream=True))
        assert http.get(url, auth=auth).status_code == 200
        clock.now += 49  # 60 s default minus the 10 s margin
        assert http.get(url, auth=auth).status_code == 200
        clock.now += 2
        assert http.get(url, auth=auth).status_code == 200
    assert len(token_proxy.requests(path="/token")) == 2


def test_link_local_realm_is_never_contacted(anonymous: RegistryClient,
                                             token_registry: Registry,
                                             token_server: TokenServer, repo: str,
                                             public: Image,
                                             fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(token_registry)
    proxy.add(Fault.headers(www_authenticate='Bearer realm="http://169.254.169.254/token",'
                                             'service="x"'), path="/manifests/", times=None)
    with pytest.raises(AuthError, match="link-local or unspecified address"):
        anonymous.get_manifest(proxy.host, repo, "v1")
    assert token_server.requests() == []


def test_bearer_not_sent_across_origins(anonymous: RegistryClient, token_registry: Registry,
                                        token_server: TokenServer, repo: str, public: Image,
                                        fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(token_registry)
    proxy.add(Fault.redirect(), path="/blobs/", nth=2)  # the first GET is the 401 challenge
    layer = public.layers[0]
    with anonymous.open_blob(proxy.host, repo, parse_digest(layer.digest)) as blob:
        assert b"".join(blob.chunks()) == layer.data
    sent = [(r.listener, r.authorization, r.status)
            for r in proxy.requests(path="/blobs/|/presigned/")]
    assert sent == [("proxy", False, 401), ("proxy", True, 307), ("redirect", False, 200)]


# -- Basic, against the real htpasswd registry --------------------------------------------

@pytest.fixture
def basic_image(basic_registry: Registry, repo: str) -> Image:
    img = small_image()
    push(basic_registry, repo, "v1", img)
    return img


def test_basic_with_config_auths(docker_config: ConfigFixture, basic_registry: Registry,
                                 repo: str, basic_image: Image, sleeps: Sleeps,
                                 fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(basic_registry)
    docker_config.add_auth(proxy.host, "bob", "builder")
    with client_with(None, sleeps) as client:
        assert client.get_manifest(proxy.host, repo, "v1").body == basic_image.manifest
        assert client.head_manifest(proxy.host, repo, "v1").digest == parse_digest(
            basic_image.digest)
    # Challenged once, then credentials go up front.
    assert [(r.method, r.authorization, r.status) for r in proxy.requests()] == [
        ("GET", False, 401), ("GET", True, 200), ("HEAD", True, 200)]


def test_basic_with_creds_store_helper(docker_config: ConfigFixture, basic_registry: Registry,
                                       repo: str, basic_image: Image, sleeps: Sleeps) -> None:
    docker_config.helper("store", {basic_registry.host: ("alice", "wonderland")})
    docker_config.set_creds_store("store")
    with client_with(None, sleeps) as client:
        assert client.get_manifest(basic_registry.host, repo, "v1").body == basic_image.manifest


def test_basic_without_credentials(anonymous: RegistryClient, basic_registry: Registry,
                                   repo: str, basic_image: Image, sleeps: Sleeps) -> None:
    with pytest.raises(AuthError) as info:
        anonymous.get_manifest(basic_registry.host, repo, "v1")
    assert str(info.value) == (
        f"GET {basic_registry.url}/v2/{repo}/manifests/v1: 401 Unauthorized (UNAUTHORIZED:"
        " authentication required): the registry needs credentials and none are configured"
        f" for {basic_registry.host}; run `docker login`")
    assert sleeps == []


def test_basic_wrong_password(docker_config: ConfigFixture, basic_registry: Registry,
                              repo: str, basic_image: Image, sleeps: Sleeps,
                              fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(basic_registry)
    docker_config.add_auth(proxy.host, "bob", "not-builder")
    with client_with(None, sleeps) as client, pytest.raises(AuthError) as info:
        client.get_manifest(proxy.host, repo, "v1")
    assert str(info.value).endswith("the registry refused the configured credentials; run"
                                    f" `docker login` for {proxy.host} again")
    assert "not-builder" not in str(info.value)
    assert [r.status for r in proxy.requests()] == [401, 401]


def test_basic_credentials_not_sent_across_origins(
        docker_config: ConfigFixture, basic_registry: Registry, repo: str,
        basic_image: Image, sleeps: Sleeps, fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(basic_registry)
    docker_config.add_auth(proxy.host, "alice", "wonderland")
    proxy.add(Fault.redirect(), path="/blobs/", nth=2)  # the first GET is the 401 challenge
    layer = basic_image.layers[0]
    with client_with(None, sleeps) as client:
        with client.open_blob(proxy.host, repo, parse_digest(layer.digest)) as blob:
            assert b"".join(blob.chunks()) == layer.data
    sent = [(r.listener, r.authorization, r.status) for r in proxy.requests()]
    assert sent == [("proxy", False, 401), ("proxy", True, 307), ("redirect", False, 200)]


def test_401_from_redirect_target_is_not_answered(
        docker_config: ConfigFixture, basic_registry: Registry, repo: str,
        basic_image: Image, sleeps: Sleeps, fault_proxy: Callable[..., FaultProxy]) -> None:
    proxy = fault_proxy(basic_registry)
    docker_config.add_auth(proxy.host, "alice", "wonderland")
    proxy.add(Fault.redirect(), path="/blobs/", nth=2)
    proxy.add(Fault.status(401, headers={"WWW-Authenticate": 'Basic realm="storage"'}),
              path="/presigned/", listener="redirect")
    with client_with(None, sleeps) as client, pytest.raises(RegistryError) as info:
        with client.open_blob(proxy.host, repo, parse_digest(basic_image.layers[0].digest)):
            pass
    assert not isinstance(info.value, AuthError)
    assert "401 Unauthorized (UNAUTHORIZED: injected by the fault proxy: 401) from" \
        f" {proxy.redirect_url}/presigned/" in str(info.value)
    storage = proxy.requests(listener="redirect")
    assert [(r.authorization, r.status) for r in storage] == [(False, 401)]


def test_threads_sharing_a_client_share_one_token(anonymous: RegistryClient,
                                                  token_registry: Registry,
                                                  token_server: TokenServer, repo: str,
                                                  public: Image) -> None:
    start = threading.Barrier(6)

    def get(_: int) -> bytes:
        start.wait()
        return anonymous.get_manifest(token_registry.host, repo, "v1").body

    with ThreadPoolExecutor(6) as pool:
        assert set(pool.map(get, range(6))) == {public.manifest}
    # Every thread met the 401; one fetched the token, the others waited for it.
    assert len(token_server.requests()) == 1
