"""BlobCache against the real registry, with the fault proxy for what it will not do."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pipeline.base.digest import Digest, digest_of, parse_digest
from pipeline.errors import BadDigest, DigestMismatch, RegistryError
from pipeline.registry.blobcache import BlobCache
from pipeline.registry.client import RegistryClient
from tests.harness.clients import Sleeps
from tests.harness.faultproxy import Fault, FaultProxy
from tests.harness.images import Blob
from tests.harness.push import push
from tests.harness.registry import Registry

REPO_ROOT = Path(__file__).resolve().parents[2]
BLOB_BYTES = 3 * 1024 * 1024


@pytest.fixture
def blob(registry: Registry, repo: str) -> Blob:
    """3 MiB of incompressible bytes pushed to ``repo``."""
    data = random.Random(repo).randbytes(BLOB_BYTES)
    b = Blob(data, "application/octet-stream")
    push(registry, repo, None, b)
    return b


def blob_gets(proxy: FaultProxy) -> list[tuple[str | None, int]]:
    return [(r.range, r.status) for r in proxy.requests(method="GET", path="/blobs/")]


def leftovers(cache: BlobCache, digest: str) -> list[str]:
    d = parse_digest(digest)
    return sorted(p.name for p in (cache.root / d.algorithm).iterdir() if p.name != d.hex)


def test_fetch_verifies_and_places(client: RegistryClient, registry: Registry, repo: str,
                                   blob: Blob, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "blobs")
    progress: list[tuple[int, int]] = []
    path = cache.fetch(client, registry.host, repo, blob.digest, blob.size,
                       progress=lambda done, total: progress.append((done, total)))
    assert path == tmp_path / "blobs" / "sha256" / blob.digest.split(":")[1]
    assert path.read_bytes() == blob.data
    assert cache.has(blob.digest) and cache.verify(blob.digest, blob.size) == path
    assert progress[-1] == (blob.size, blob.size)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress)
    assert leftovers(cache, blob.digest) == []


def test_second_fetch_does_not_download(client: RegistryClient, proxy: FaultProxy, repo: str,
                                        blob: Blob, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    first = cache.fetch(client, proxy.host, repo, blob.digest, blob.size)
    second = cache.fetch(client, proxy.host, repo, parse_digest(blob.digest), blob.size)
    assert first == second
    assert blob_gets(proxy) == [(None, 200)]


def test_resume_after_reset_uses_range(client: RegistryClient, proxy: FaultProxy, repo: str,
                                       blob: Blob, tmp_path: Path) -> None:
    proxy.add(Fault.reset(after_bytes=1_000_000), path="/blobs/")
    cache = BlobCache(tmp_path)
    path = cache.fetch(client, proxy.host, repo, blob.digest, blob.size)
    assert path.read_bytes() == blob.data
    (first, second) = blob_gets(proxy)
    assert first == (None, 200)
    # Bytes in flight when the RST arrives are lost, so the offset is at most 1 MB.
    match = re.fullmatch(r"bytes=(\d+)-", second[0] or "")
    assert match and 0 < int(match.group(1)) <= 1_000_000 and second[1] == 206
    assert leftovers(cache, blob.digest) == []


def test_resume_answered_200_restarts_from_zero(client: RegistryClient, proxy: FaultProxy,
                                                repo: str, blob: Blob, tmp_path: Path) -> None:
    proxy.add(Fault.reset(after_bytes=1_000_000), path="/blobs/")
    # The resumed request gets the whole blob with 200, as a server ignoring Range would.
    proxy.add(Fault.body(blob.data, headers={"Content-Type": "application/octet-stream"}),
              path="/blobs/", nth=2)
    path = BlobCache(tmp_path).fetch(client, proxy.host, repo, blob.digest, blob.size)
    assert path.read_bytes() == blob.data
    assert [status for _, status in blob_gets(proxy)] == [200, 200]


@pytest.mark.parametrize("content_range", [
    "bytes 0-3145727/3145728", "bytes 5-3145727/3145728", "bytes 100-200/3145728", None,
    # Malformed: each is treated as absent (never int() of "²", never a traceback).
    "bytes \u00b2-3145727/3145728", "bytes 1-" + "9" * 40 + "/" + "9" * 40, "\xff\xfe",
    "nonsense", "bytes -5-3145727/3145728",
], ids=["from-zero", "wrong-start", "short-end", "missing", "non-ascii-digit", "40-digits",
        "non-ascii-bytes", "nonsense", "negative"])
def test_resume_with_wrong_content_range_starts_over(
        client: RegistryClient, proxy: FaultProxy, repo: str, blob: Blob, tmp_path: Path,
        content_range: str | None) -> None:
    proxy.add(Fault.reset(after_bytes=1_000_000), path="/blobs/")
    proxy.add(Fault.headers(content_range=content_range), path="/blobs/", nth=2)
    with capture_logs() as logs:
        path = BlobCache(tmp_path).fetch(client, proxy.host, repo, blob.digest, blob.size)
    assert path.read_bytes() == blob.data
    gets = blob_gets(proxy)
    assert len(gets) == 3 and gets[1][0] is not None and gets[2] == (None, 200)
    # The value arrived as sent (so it was judged, not lost on the way) and was refused.
    said = [e["what"] for e in logs if e["event"] == "registry.retry"]
    assert len(said) == 2 and f"with Content-Range {content_range!r}; starting over" in said[1]


def test_429_with_retry_after_then_success(client: RegistryClient, proxy: FaultProxy,
                                           sleeps: Sleeps, repo: str, blob: Blob,
                                           tmp_path: Path) -> None:
    proxy.add(Fault.too_many_requests(retry_after=3), path="/blobs/")
    path = BlobCache(tmp_path).fetch(client, proxy.host, repo, blob.digest, blob.size)
    assert path.read_bytes() == blob.data
    assert sleeps == [3.0]
    assert blob_gets(proxy) == [(None, 429), (None, 200)]


def test_503_twice_then_success_backs_off(client: RegistryClient, proxy: FaultProxy,
                                          sleeps: Sleeps, repo: str, blob: Blob,
                                          tmp_path: Path) -> None:
    proxy.add(Fault.unavailable(), path="/blobs/", times=2)
    BlobCache(tmp_path).fetch(client, proxy.host, repo, blob.digest, blob.size)
    assert sleeps == [0.25, 0.5]  # base 0.5 s doubling, jitter at its low end (half)


def test_resets_forever_give_up_and_leave_nothing(client: RegistryClient, proxy: FaultProxy,
                                                  repo: str, blob: Blob, tmp_path: Path) -> None:
    proxy.add(Fault.reset(after_bytes=200_000), path="/blobs/", times=None)
    cache = BlobCache(tmp_path)
    with pytest.raises(RegistryError) as info:
        cache.fetch(client, proxy.host, repo, blob.digest, blob.size)
    assert info.value.temporary
    assert len(blob_gets(proxy)) == client.retry.attempts
    assert not cache.has(blob.digest) and leftovers(cache, blob.digest) == []


def test_wrong_bytes_fail_and_leave_nothing(client: RegistryClient, proxy: FaultProxy,
                                            repo: str, blob: Blob, tmp_path: Path) -> None:
    proxy.add(Fault.corrupt(), path="/blobs/", times=None)
    cache = BlobCache(tmp_path)
    with pytest.raises(DigestMismatch) as info:
        cache.fetch(client, proxy.host, repo, blob.digest, blob.size)
    assert info.value.what == f"blob {blob.digest} from {proxy.host}/{repo}"
    assert info.value.expected == blob.digest
    assert len(blob_gets(proxy)) == 1  # bad bytes are not a reason to hammer the registry
    assert not cache.has(blob.digest) and leftovers(cache, blob.digest) == []


def test_longer_body_than_declared_size(client: RegistryClient, proxy: FaultProxy, repo: str,
                                        blob: Blob, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    with pytest.raises(DigestMismatch) as info:
        cache.fetch(client, proxy.host, repo, blob.digest, blob.size - 1)
    assert str(info.value) == (f"blob {blob.digest} from {proxy.host}/{repo} size: expected"
                               f" {blob.size - 1} bytes, got more than {blob.size - 1} bytes")
    assert leftovers(cache, blob.digest) == []


def test_missing_blob_is_404_at_once(client: RegistryClient, proxy: FaultProxy, repo: str,
                                     blob: Blob, sleeps: Sleeps, tmp_path: Path) -> None:
    missing = digest_of(b"not pushed")
    with pytest.raises(RegistryError) as info:
        BlobCache(tmp_path).fetch(client, proxy.host, repo, missing, 10)
    assert info.value.status == 404 and info.value.code == "BLOB_UNKNOWN"
    assert str(info.value).startswith(
        f"GET http://{proxy.host}/v2/{repo}/blobs/{missing}: 404 Not Found (BLOB_UNKNOWN:")
    assert sleeps == [] and len(blob_gets(proxy)) == 1


def test_interrupted_download_leaves_nothing(client: RegistryClient, registry: Registry,
                                             repo: str, blob: Blob, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)

    def interrupt(done: int, total: int) -> None:
        if done > 1_000_000:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.fetch(client, registry.host, repo, blob.digest, blob.size, progress=interrupt)
    assert not cache.has(blob.digest) and leftovers(cache, blob.digest) == []
    again = cache.fetch(client, registry.host, repo, blob.digest, blob.size)
    assert again.read_bytes() == blob.data


def test_stale_partials_are_cleaned(client: RegistryClient, registry: Registry, repo: str,
                                    blob: Blob, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    hex_ = blob.digest.split(":")[1]
    other = "b" * 64
    (tmp_path / "sha256").mkdir()
    (tmp_path / "sha256" / f".{hex_}.dead01.partial").write_bytes(b"junk")
    (tmp_path / "sha256" / f".{other}.dead02.partial").write_bytes(b"junk")
    (tmp_path / "sha256" / ".not-a-digest.partial").write_bytes(b"keep")
    cache.fetch(client, registry.host, repo, blob.digest, blob.size)
    assert leftovers(cache, blob.digest) == [f".{other}.dead02.partial", ".not-a-digest.partial"]
    assert cache.clean_stale() == 1
    assert leftovers(cache, blob.digest) == [".not-a-digest.partial"]


def test_damaged_file_is_detected_and_refetched(client: RegistryClient, registry: Registry,
                                                repo: str, blob: Blob, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    path = cache.fetch(client, registry.host, repo, blob.digest, blob.size)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DigestMismatch):
        cache.verify(blob.digest, blob.size)
    path.write_bytes(bytes(data[:-5]))  # wrong size: fetch notices without rehashing
    again = cache.fetch(client, registry.host, repo, blob.digest, blob.size)
    assert again.read_bytes() == blob.data


@pytest.mark.parametrize("digest", [
    "sha256:../../etc/passwd", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256/" + "a" * 64,
    "sha256:" + "a" * 63,
], ids=["traversal", "uppercase", "md5", "slash", "short"])
def test_digests_are_validated_before_use(tmp_path: Path, digest: str) -> None:
    cache = BlobCache(tmp_path)
    with pytest.raises(BadDigest) as err:
        cache.path(digest)
    assert str(err.value).startswith(f"invalid digest {digest!r}: ")
    with pytest.raises(BadDigest):
        cache.has(digest)


def test_sha512_paths(tmp_path: Path) -> None:
    d = Digest("sha512", "c" * 128)
    assert BlobCache(tmp_path).path(d) == tmp_path / "sha512" / ("c" * 128)


def test_sha512_blob_fetch(client: RegistryClient, registry: Registry, repo: str,
                           blob: Blob, tmp_path: Path) -> None:
    # distribution 2.8 serves a blob by any digest it knows; it only knows sha256,
    # so asking by sha512 is a clean 404 and never a path outside the cache.
    d = digest_of(blob.data, "sha512")
    with pytest.raises(RegistryError) as info:
        BlobCache(tmp_path).fetch(client, registry.host, repo, d, blob.size)
    assert info.value.status in (400, 404)


def test_threads_fetching_one_digest_download_once(client: RegistryClient, proxy: FaultProxy,
                                                   repo: str, blob: Blob,
                                                   tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    start = threading.Barrier(8)

    def fetch(_: int) -> Path:
        start.wait()
        return cache.fetch(client, proxy.host, repo, blob.digest, blob.size)

    with ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(fetch, range(8)))
    assert paths == {cache.path(blob.digest)}
    assert blob_gets(proxy) == [(None, 200)]
    cache.verify(blob.digest, blob.size)
    assert leftovers(cache, blob.digest) == []


_CHILD = """
import sys
from pathlib import Path
from pipeline.registry.blobcache import BlobCache
from pipeline.registry.credentials import NoCredentials
from pipeline.registry.client import RegistryClient
root, host, repo, digest, size = sys.argv[1:]
print("ready", flush=True)
with RegistryClient(credentials=NoCredentials()) as client:
    print(BlobCache(Path(root)).fetch(client, host, repo, digest, int(size)), flush=True)
"""


def test_processes_fetching_one_digest_download_once(proxy: FaultProxy, repo: str, blob: Blob,
                                                     tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    (tmp_path / "sha256").mkdir()
    args = [str(tmp_path), proxy.host, repo, blob.digest, str(blob.size)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Hold the digest's lock while the children start, so they all queue on it.
    with cache._locked(parse_digest(blob.digest), blocking=True):
        children = [subprocess.Popen([sys.executable, "-c", _CHILD, *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                    for _ in range(3)]
        for child in children:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
    outputs = [child.communicate(timeout=60) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], outputs
    # structlog, unconfigured, logs to stdout: the path is the last line.
    assert {out.strip().splitlines()[-1] for out, _ in outputs} == {str(cache.path(blob.digest))}
    assert blob_gets(proxy) == [(None, 200)]
    cache.verify(blob.digest, blob.size)
    assert leftovers(cache, blob.digest) == []


class RecordingTee:
    """A BlobTee that writes down what the blob cache told it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def feed(self, offset: int, chunk: bytes) -> None:
        self.events.append(("feed", offset, len(chunk)))

    def restart(self) -> None:
        self.events.append(("restart", 0, 0))

    def verified(self) -> None:
        self.events.append(("verified", 0, 0))

    def story(self) -> list[str]:
        """Runs of contiguous feeds as "fed A-B", and the other calls by name."""
        told: list[str] = []
        for kind, offset, length in self.events:
            if kind != "feed":
                told.append(kind)
            elif told and told[-1].startswith("fed ") and int(told[-1].split("-")[1]) == offset:
                told[-1] = f"{told[-1].split('-')[0]}-{offset + length}"
            else:
                told.append(f"fed {offset}-{offset + length}")
        return told


@pytest.mark.parametrize("faults, story", [
    pytest.param(lambda p, b: None, ["fed 0-{size}", "verified"], id="clean"),
    pytest.param(lambda p, b: p.add(Fault.reset(after_bytes=1_000_000), path="/blobs/"),
                 ["fed 0-{size}", "verified"], id="reset-resumed-without-a-gap"),
    pytest.param(lambda p, b: (p.add(Fault.reset(after_bytes=1_000_000), path="/blobs/"),
                               p.add(Fault.body(b.data), path="/blobs/", nth=2)),
                 ["fed 0-?", "restart", "fed 0-{size}", "verified"], id="resume-answered-200"),
    pytest.param(lambda p, b: p.add(Fault.corrupt(), path="/blobs/"),
                 ["fed 0-{size}"], id="wrong-bytes-never-verified"),
])
def test_a_tee_sees_every_byte_once_in_order_and_verified_last(
        client: RegistryClient, proxy: FaultProxy, repo: str, blob: Blob, tmp_path: Path,
        faults, story: list[str]) -> None:  # type: ignore[no-untyped-def]
    faults(proxy, blob)
    tee = RecordingTee()
    try:
        BlobCache(tmp_path).fetch(client, proxy.host, repo, blob.digest, blob.size, tee=tee)
    except DigestMismatch:
        pass
    told = tee.story()
    expected = [s.replace("{size}", str(blob.size)) for s in story]
    assert [t if not e.endswith("?") else e for t, e in zip(told, expected)] == expected
    assert len(told) == len(expected)


def test_a_cached_blob_feeds_the_tee_nothing(client: RegistryClient, registry: Registry,
                                             repo: str, blob: Blob, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path)
    cache.fetch(client, registry.host, repo, blob.digest, blob.size)
    tee = RecordingTee()
    cache.fetch(client, registry.host, repo, blob.digest, blob.size, tee=tee)
    assert tee.events == []
