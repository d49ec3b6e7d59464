"""A content-addressed blob cache: only verified bytes ever reach a final path.

Layout: ``<root>/<algorithm>/<hex>`` for finished blobs. Work in progress
lives next to them under hidden names, so a rename is atomic and never
crosses a filesystem:

- ``.<hex>.<random>.partial``: a download being written (or left by a crash);
- ``.<hex>.lock``: the per-digest ``flock`` that serialises downloads of one
  digest across threads and processes (flock locks belong to the open file
  description, so two threads of one process exclude each other too).

A download streams to a temporary file, hashing and counting on the way
(``VerifyingHasher`` stops at the declared size), is fsynced, renamed into
place and the directory fsynced. A failure or interrupt removes the
temporary file. After a dropped connection the download resumes with
``Range: bytes=N-`` and accepts only a 206 whose ``Content-Range`` starts at
N and ends at the blob's end; anything else starts over from byte 0. A
``BlobTee`` may watch the bytes go by (the layer unpacker does, to overlap
with the download); it is told when the download starts over and when the
bytes are verified, and may slow the download down but never changes it. Who
holds a digest's lock owns every ``.partial`` of that digest, so leftovers
from crashed runs are removed there (and by ``clean_stale``).

What it refuses to trust: the digest string (validated before it is used in
a path or URL), the size (must be a non-negative int), and every byte the
registry sends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import structlog

from pipeline.base.digest import Digest, VerifyingHasher, parse_digest
from pipeline.base.files import fsync_dir
from pipeline.base.writeback import Writeback
from pipeline.errors import BadDigest, BusyError, DigestMismatch, RegistryError

if TYPE_CHECKING:  # the client is handed in; importing it here would pull httpx into every run
    from pipeline.registry.client import BlobStream, RegistryClient

__all__ = ["BlobCache", "BlobTee", "Progress", "READ_CHUNK_BYTES"]

log = structlog.get_logger(__name__)

Progress = Callable[[int, int], None]


class Readable(Protocol):
    """What a local blob is copied from: ``read(n)`` until it returns nothing."""

    def read(self, n: int = -1, /) -> bytes: ...


class BlobTee(Protocol):
    """Someone who wants a download's bytes as they arrive (e.g. to unpack them meanwhile).

    Until ``verified`` is called the bytes are unverified; a tee must not
    act on them in a way it cannot undo.
    """

    def feed(self, offset: int, chunk: bytes) -> None:
        """``chunk`` was just written at ``offset`` of the blob (may block to slow us down)."""

    def restart(self) -> None:
        """The download starts over from byte 0; everything fed so far is discarded."""

    def verified(self) -> None:
        """Every byte fed is the blob, and its digest and size matched; nothing follows."""

# Rehashing reads in 1 MiB pieces: large enough to amortise syscalls.
READ_CHUNK_BYTES = 1024 * 1024
_PARTIAL = ".partial"


def _as_digest(digest: Digest | str) -> Digest:
    if isinstance(digest, Digest):
        return parse_digest(str(digest))  # re-validated: it becomes a path
    return parse_digest(digest)


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"internal error: blob size must be a non-negative int, got {size!r}")
    return size


class BlobCache:
    """Verified blobs under ``root``; safe to use from many threads and processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, digest: Digest | str) -> Path:
        d = _as_digest(digest)
        return self.root / d.algorithm / d.hex

    def has(self, digest: Digest | str) -> bool:
        return self.path(digest).is_file()

    def fetch(self, client: RegistryClient, registry: str, repository: str,
              digest: Digest | str, size: int, *, progress: Progress | None = None,
              tee: BlobTee | None = None) -> Path:
        """The verified blob's path, downloading it first unless it is already here.

        ``tee`` gets the bytes of a download as they are written (none if the
        blob was here already), and ``verified()`` once they are the blob.
        """
        def download(d: Digest, size: int, final: Path) -> None:
            self._download(client, registry, repository, d, size, final, progress, tee)

        return self._fill(digest, size, download)

    def ingest(self, digest: Digest | str, size: int,
               opener: Callable[[], AbstractContextManager[Readable]], *, what: str,
               progress: Progress | None = None, tee: BlobTee | None = None) -> Path:
        """The verified blob's path, copying it from ``opener()`` (a local file) if not here.

        The same rules as a download: hashed and counted while copied, renamed
        into place only when digest and size match, ``tee`` fed on the way.
        """
        def copy(d: Digest, size: int, final: Path) -> None:
            tmp = final.parent / f".{d.hex}.{secrets.token_hex(6)}{_PARTIAL}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                with os.fdopen(fd, "wb") as out, opener() as source:
                    hasher = VerifyingHasher(d, size=size, what=f"blob {d} from {what}")
                    written = 0
                    while chunk := source.read(READ_CHUNK_BYTES):
                        hasher.update(chunk)  # raises DigestMismatch past the declared size
                        out.write(chunk)
                        if tee is not None:
                            tee.feed(written, chunk)
                        written += len(chunk)
                        if progress is not None:
                            progress(written, size)
                    hasher.verify()
                    if tee is not None:
                        tee.verified()
                    out.flush()
                    os.fsync(out.fileno())
                os.rename(tmp, final)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                raise
            fsync_dir(final.parent)
            log.debug("blobcache.ingested", digest=str(d), size=size, source=what)

        return self._fill(digest, size, copy)

    def _fill(self, digest: Digest | str, size: int,
              write: Callable[[Digest, int, Path], None]) -> Path:
        """The verified blob's path; ``write(d, size, final)`` puts it there if missing.

        Under the digest's lock, so two processes wanting one blob write it once.
        """
        d, size = _as_digest(digest), _check_size(size)
        final = self.path(d)
        if self._present(final, size):
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        with self._locked(d, blocking=True):
            # Someone else may have finished it while we waited for the lock.
            if self._present(final, size):
                return final
            self._remove_partials(d)
            write(d, size, final)
        return final

    def verify(self, digest: Digest | str, size: int) -> Path:
        """Rehash a cached blob; raise DigestMismatch (or FileNotFoundError) if it is not good."""
        d, size = _as_digest(digest), _check_size(size)
        final = self.path(d)
        hasher = VerifyingHasher(d, size=size, what=f"cached blob {final}")
        with open(final, "rb") as f:
            while chunk := f.read(READ_CHUNK_BYTES):
                hasher.update(chunk)
        hasher.verify()
        return final

    def clean_stale(self) -> int:
        """Remove temp files of crashed runs (never those of live downloads); return the count."""
        removed = 0
        for partial in sorted(self.root.glob(f"*/.*{_PARTIAL}")):
            hex_ = partial.name[1:].split(".", 1)[0]
            try:
                d = Digest(partial.parent.name, hex_)
            except BadDigest:  # not one of ours: a name we never produce
                continue
            with contextlib.suppress(BusyError), self._locked(d, blocking=False):
                removed += self._remove_partials(d)
        return removed

    # Internals --------------------------------------------------------------

    def _present(self, final: Path, size: int) -> bool:
        try:
            found = final.stat().st_size
        except FileNotFoundError:
            return False
        if found == size:
            return True
        # Only verified bytes are ever renamed here, so this is outside damage.
        log.warning("blobcache.size_mismatch", path=str(final), expected=size, found=found)
        with contextlib.suppress(FileNotFoundError):
            final.unlink()
        return False

    def _remove_partials(self, d: Digest) -> int:
        count = 0
        for partial in (self.root / d.algorithm).glob(f".{d.hex}.*{_PARTIAL}"):
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
                count += 1
        return count

    @contextlib.contextmanager
    def _locked(self, d: Digest, *, blocking: bool) -> Iterator[None]:
        lock_path = self.root / d.algorithm / f".{d.hex}.lock"
        while True:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    raise BusyError(f"blob {d} is being downloaded by another process") from None
                # The previous holder unlinks the lock file before releasing it;
                # if ours is no longer the file at lock_path, lock the new one.
                try:
                    same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
            except BaseException:
                os.close(fd)
                raise
            if same:
                break
            os.close(fd)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                lock_path.unlink()
            os.close(fd)

    def _download(self, client: RegistryClient, registry: str, repository: str, d: Digest,
                  size: int, final: Path, progress: Progress | None,
                  tee: BlobTee | None) -> None:
        tmp = final.parent / f".{d.hex}.{secrets.token_hex(6)}{_PARTIAL}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb") as out:
                _Transfer(client, registry, repository, d, size, out, progress, tee).run()
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        fsync_dir(final.parent)
        log.debug("blobcache.fetched", digest=str(d), size=size, registry=registry,
                 repository=repository)


class _Transfer:
    """One blob download into an open file: retries, resume, verification."""

    def __init__(self, client: RegistryClient, registry: str, repository: str, d: Digest,
                 size: int, out: BinaryIO, progress: Progress | None,
                 tee: BlobTee | None = None) -> None:
        self.client, self.registry, self.repository = client, registry, repository
        self.digest, self.size, self.out, self.progress = d, size, out, progress
        self.tee = tee
        self.what = f"blob {d} from {registry}/{repository}"
        self.written = 0
        self._restart()
        self.resumed = False

    def _restart(self) -> None:
        if self.tee is not None and self.written:
            self.tee.restart()  # it was fed bytes that no longer count
        self.out.seek(0)
        self.out.truncate()
        self.written = 0
        # Fsynced before it is published: written back as it arrives, not all at the end.
        self.writeback = Writeback(self.out.fileno())
        self.hasher = VerifyingHasher(self.digest, size=self.size, what=self.what)

    def run(self) -> None:
        attempt = 0
        restarted_after_mismatch = False
        while True:
            try:
                self._once()
                self.hasher.verify()
                if self.tee is not None:
                    self.tee.verified()
                return
            except RegistryError as error:
                delay = self.client.retry.next_delay(error, attempt)  # raises when giving up
            except DigestMismatch:
                # Bytes spliced from two responses may disagree (a blob that changed
                # under the same digest cannot; a broken proxy can). One clean try.
                if not self.resumed or restarted_after_mismatch:
                    raise
                restarted_after_mismatch = True
                log.warning("blobcache.restart_after_mismatch", digest=str(self.digest))
                self._restart()
                self.resumed = False
                continue
            attempt += 1
            self.client.retry.sleep(delay)

    def _once(self) -> None:
        offset = self.written
        with self.client.open_blob(self.registry, self.repository, self.digest,
                                   offset=offset) as stream:
            if offset:
                if stream.status == 200 and not stream.encoded:
                    # Range ignored: this is the whole blob again, so use it from byte 0.
                    log.debug("blobcache.range_ignored", digest=str(self.digest), offset=offset)
                    self._restart()
                elif not (stream.status == 206 and not stream.encoded
                          and _range_ok(stream.content_range, offset, self.size)):
                    self._restart()
                    raise RegistryError(
                        f"resume at byte {offset} answered {stream.status} with Content-Range"
                        f" {stream.content_range!r}; starting over from byte 0",
                        temporary=True)
                else:
                    self.resumed = True
            elif stream.status != 200:
                raise RegistryError(f"asked for the whole blob, got status {stream.status}",
                                    temporary=True)
            if stream.encoded and not offset:
                self._receive_encoded(stream)
                return
            self._receive(stream)
        if self.written < self.size:
            raise RegistryError(f"{self.what}: body ended after {self.written} of {self.size}"
                                " bytes", temporary=True)

    def _receive(self, stream: BlobStream) -> None:
        for chunk in stream.chunks():
            self.hasher.update(chunk)  # raises DigestMismatch past the declared size
            self.out.write(chunk)
            if self.tee is not None:
                self.tee.feed(self.written, chunk)
            self.written += len(chunk)
            self.writeback.written(self.written)
            if self.progress is not None:
                self.progress(self.written, self.size)

    def _receive_encoded(self, stream: BlobStream) -> None:
        """A whole blob sent with a Content-Encoding we did not ask for: verified as sent.

        Some storage labels stored gzip layers ``gzip`` without encoding them
        again. Bytes that are not the blob were encoded on the way, as they
        will be every time: refused at once, naming the encoding.
        """
        try:
            self._receive(stream)
            if self.written >= self.size:
                self.hasher.verify()
                return
            got = f"{self.written} bytes, not {self.size}"
        except DigestMismatch as err:
            got = err.got if self.written >= self.size else f"more than {self.size} bytes"
        raise RegistryError(
            f"{self.what}: sent with Content-Encoding {stream.encoding!r} although we asked"
            f" for identity, and the bytes as sent are not the blob ({got}); refusing it"
            " without retrying (the registry encodes it on the way), report it to the registry")


_CONTENT_RANGE = re.compile(r"[Bb][Yy][Tt][Ee][Ss] ([0-9]{1,18})-([0-9]{1,18})/(\*|[0-9]{1,18})")


def _range_ok(content_range: str | None, offset: int, size: int) -> bool:
    """``bytes <offset>-<size-1>/<size or *>`` and nothing else (RFC 9110 section 14.4)."""
    if not content_range:
        return False
    # ASCII digits only: str.isdigit() accepts "²", which int() then refuses.
    found = _CONTENT_RANGE.fullmatch(content_range.strip())
    if found is None:
        return False
    first, last, total = found.groups()
    return (int(first) == offset and int(last) == size - 1
            and (total == "*" or int(total) == size))
