"""Every error the pipeline raises on purpose.

Hierarchy::

    PipelineError                  base: anything a user can act on
    ├── ManifestError              images.toml is invalid (file, line, key)
    ├── LockError                  images.lock.json is missing, stale or corrupt
    ├── BadReference               an image reference does not parse
    ├── BadDigest                  a digest string is malformed or unsupported
    ├── BadPlatform                a platform string does not parse
    ├── PlatformNotFound           an index offers no manifest for the platform
    ├── BadImage                   a manifest, index or config is malformed or refused
    ├── RegistryError              the registry refused or failed a request
    │   ├── AuthError              credentials missing, rejected or unobtainable
    │   └── SourcesFailed          every mirror and the registry failed, each for its reason
    ├── LocalSourceError           an OCI layout or image archive is missing, malformed or unsafe
    ├── DigestMismatch             bytes do not hash to what was promised
    ├── LayerError                 a layer cannot be unpacked (corrupt, truncated)
    │   ├── UnknownMediaType       not a layer media type we read
    │   ├── CompressionMismatch    magic bytes disagree with the media type
    │   ├── CorruptStream          compressed stream truncated, corrupt or with garbage
    │   ├── CorruptTar             tar stream malformed
    │   ├── UnsupportedEntry       tar entry type we cannot represent
    │   ├── BadHardLink            hard link to a missing, whited-out or directory entry
    │   ├── ParentNotDirectory     an entry's parent is a file, device or fifo
    │   ├── LimitExceeded          a layer exceeds a configured safety limit
    │   └── UnsafeLayerEntry       a layer entry tries to leave or corrupt the tree
    │       ├── PathOutsideRoot    ``..`` leaves the image root
    │       ├── BadName            NUL, empty or overlong name or link target
    │       ├── MalformedWhiteout  ``.wh.`` names that name nothing
    │       ├── RootTypeChange     the root would stop being a directory
    │       └── TooManySymlinks    a symlink loop while resolving a parent
    ├── Ext4Error                  the ext4 image cannot be built as asked
    ├── ToolError                  an external tool (mkfs.ext4, debugfs...) failed
    ├── BusyError                  another pipeline run holds the same directory
    ├── SettingError               a doit variable or ROOTFS_* setting has a bad value
    ├── ShardError                 shard=K/N or the CI's shard variables are malformed
    └── RemoteArtifactError        a cached or published artifact is bad or another key's

Messages are one sentence: where, what, the offending value quoted, expected
versus got, and the next step when there is one. Secrets never appear in a
message. A broken invariant is not one of these: it is an ``AssertionError``
or ``RuntimeError`` whose message starts with "internal error:", so that a bug
never reads like bad input.

Every class pickles whole (message and attributes), whatever its
``__init__`` takes, so an error raised in a worker process reaches the run
as the same error.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AuthError",
    "BadDigest",
    "BadHardLink",
    "BadImage",
    "BadName",
    "BadPlatform",
    "BadReference",
    "BusyError",
    "CompressionMismatch",
    "CorruptStream",
    "CorruptTar",
    "DigestMismatch",
    "Ext4Error",
    "LayerError",
    "LimitExceeded",
    "LocalSourceError",
    "LockError",
    "MalformedWhiteout",
    "ManifestError",
    "ParentNotDirectory",
    "PathOutsideRoot",
    "PipelineError",
    "PlatformNotFound",
    "RegistryError",
    "SourcesFailed",
    "RemoteArtifactError",
    "RootTypeChange",
    "SettingError",
    "ShardError",
    "TooManySymlinks",
    "ToolError",
    "UnknownMediaType",
    "UnsafeLayerEntry",
    "UnsupportedEntry",
]


class PipelineError(Exception):
    """Base of every error a user can act on; ``str(err)`` is the whole message."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduce calls ``cls(*args)``, which fails for every
        # subclass whose __init__ takes other arguments than the message.
        return (_rebuild, (type(self), str(self), dict(vars(self))))


def _rebuild(kind: type[PipelineError], message: str, attrs: dict[str, Any]) -> PipelineError:
    err = kind.__new__(kind)
    Exception.__init__(err, message)
    err.__dict__.update(attrs)
    return err


class ManifestError(PipelineError):
    """images.toml is invalid: unreadable, bad syntax, unknown key or bad value."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        image: str | None = None,
        key: str | None = None,
    ) -> None:
        where = path or "images.toml"
        if line is not None:
            where = f"{where}:{line}"
        prefix = f"{where}: "
        if image is not None:
            prefix += f"image {image!r}: "
        super().__init__(prefix + message)
        self.path = path
        self.line = line
        self.image = image
        self.key = key


class LockError(PipelineError):
    """images.lock.json is missing, stale (frozen mode) or unreadable."""


class ShardError(PipelineError):
    """A shard selection (``shard=K/N`` or the CI's index variables) is malformed."""


class RemoteArtifactError(PipelineError):
    """A remote-cache or published artifact is malformed, tampered, truncated or for another key."""


class BadReference(PipelineError):
    """An image reference string does not follow the reference grammar."""

    def __init__(self, reference: str, reason: str) -> None:
        super().__init__(f"invalid image reference {reference!r}: {reason}")
        self.reference = reference
        self.reason = reason


class BadDigest(PipelineError):
    """A digest string is malformed or uses an unsupported algorithm."""

    def __init__(self, digest: str, reason: str) -> None:
        super().__init__(f"invalid digest {digest!r}: {reason}")
        self.digest = digest
        self.reason = reason


class BadPlatform(PipelineError):
    """A platform string is not ``os/arch[/variant]``."""

    def __init__(self, platform: str, reason: str) -> None:
        super().__init__(f"invalid platform {platform!r}: {reason}")
        self.platform = platform
        self.reason = reason


class PlatformNotFound(PipelineError):
    """An image index has no manifest for the requested platform."""

    def __init__(self, reference: str, wanted: str, offered: list[str]) -> None:
        listed = ", ".join(offered) if offered else "none"
        super().__init__(
            f"{reference} has no image for platform {wanted}; it offers: {listed}"
            " (set `platform` for this image in images.toml)"
        )
        self.reference = reference
        self.wanted = wanted
        self.offered = offered


class BadImage(PipelineError):
    """A manifest, index or image config is malformed, oversized or not an image."""


class LocalSourceError(PipelineError):
    """A local image source (``oci:``, ``oci-archive:``, ``docker-archive:``) cannot be read:
    missing, malformed, ambiguous, or naming something outside itself."""


class RegistryError(PipelineError):
    """A registry request failed; carries what the registry said.

    ``temporary`` tells the retry layer whether trying again can help
    (429, 5xx, connection trouble) or not (404, 403, protocol violations).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
        code: str | None = None,
        temporary: bool = False,
        retry_after: float | None = None,
    ) -> None:
        head = f"{method} {url}: " if method and url else ""
        super().__init__(head + message)
        self.method = method
        self.url = url
        self.status = status
        self.code = code
        self.temporary = temporary
        self.retry_after = retry_after
        """Seconds the registry asked us to wait (Retry-After), if it said."""


class AuthError(RegistryError):
    """Credentials are missing, rejected, or a token could not be obtained."""


class SourcesFailed(RegistryError):
    """Every source (the mirrors, then the registry unless mirrors only) failed.

    The message names each source's own failure in the order they were asked
    (a mirror's 404, another's refused connection, the registry's DNS error):
    the last one alone hides why the mirrors were skipped. The attributes are
    the last source's.
    """

    def __init__(self, what: str, failures: list[tuple[str, Exception]]) -> None:
        last = failures[-1][1]
        listed = "; ".join(f"{where}: {err}" for where, err in failures)
        super().__init__(f"{what}: all {len(failures)} sources failed: {listed}",
                         status=getattr(last, "status", None), code=getattr(last, "code", None),
                         temporary=bool(getattr(last, "temporary", False)))
        self.failures = [(where, str(err)) for where, err in failures]


class DigestMismatch(PipelineError):
    """Content does not hash to the digest (or size) it was promised under."""

    def __init__(self, what: str, expected: str, got: str) -> None:
        super().__init__(f"{what}: expected {expected}, got {got}")
        self.what = what
        self.expected = expected
        self.got = got


class LayerError(PipelineError):
    """A layer cannot be unpacked: corrupt, truncated or of an unknown kind."""

    def __init__(self, layer: str, message: str, *, member: str | None = None) -> None:
        where = f"layer {layer}"
        if member is not None:
            where += f", entry {member!r}"
        super().__init__(f"{where}: {message}")
        self.layer = layer
        self.member = member


class UnsafeLayerEntry(LayerError):
    """A layer entry would escape the root, or point a link outside the tree."""


class LimitExceeded(LayerError):
    """A layer goes past a safety limit (bytes, entries, header or path size)."""


# Reading the blob (compression): one class per rejection reason.
class UnknownMediaType(LayerError):
    """The descriptor's media type is not a layer type we know how to read."""


class CompressionMismatch(LayerError):
    """The blob's magic bytes disagree with its descriptor's media type."""


class CorruptStream(LayerError):
    """The compressed stream is truncated, corrupt or followed by garbage."""


# Reading the tar stream (unpack): one class per rejection reason.
class CorruptTar(LayerError):
    """The tar stream is malformed: bad checksum or number, truncated, garbage."""


class UnsupportedEntry(LayerError):
    """A tar entry type we cannot represent (unknown type, GNU sparse file)."""


class PathOutsideRoot(UnsafeLayerEntry):
    """A name or hard-link target uses ``..`` to leave the image root."""


class BadName(UnsafeLayerEntry):
    """A name or link target holds a NUL byte, is empty where it cannot be, or is too long."""


class MalformedWhiteout(UnsafeLayerEntry):
    """A ``.wh.`` name that names nothing (``.wh.``, ``.wh..``, ``.wh...``) or unknown metadata."""


# Applying a layer to the tree (flatten): one class per rejection reason.
class RootTypeChange(UnsafeLayerEntry):
    """An entry for the root path is not a directory (it could make the root a symlink)."""


class BadHardLink(LayerError):
    """A hard link's target is missing, whited out or a directory."""


class ParentNotDirectory(LayerError):
    """An entry's parent path runs into a file, device or fifo."""


class TooManySymlinks(UnsafeLayerEntry):
    """Resolving an entry's parent path follows too many symlinks (a loop)."""


class Ext4Error(PipelineError):
    """The ext4 image cannot be built as configured (e.g. a fixed size too small)."""


class ToolError(PipelineError):
    """An external tool failed; the message carries its exit status and stderr tail."""

    def __init__(self, tool: str, message: str, *, returncode: int | None = None,
                 stderr: str = "") -> None:
        detail = f"{tool}: {message}"
        if returncode is not None:
            detail += f" (exit status {returncode})"
        tail = stderr.strip().splitlines()[-3:]
        if tail:
            detail += ": " + " | ".join(tail)
        super().__init__(detail)
        self.tool = tool
        self.returncode = returncode
        self.stderr = stderr


class BusyError(PipelineError):
    """Another pipeline process holds the lock on the same cache or output directory."""


class SettingError(PipelineError):
    """A run setting (a doit ``name=value`` variable or a ROOTFS_* variable) is invalid."""

    def __init__(self, name: str, value: str, allowed: str) -> None:
        super().__init__(f"{name}={value!r} is not valid: expected {allowed}")
        self.name = name
        self.value = value
        self.allowed = allowed
