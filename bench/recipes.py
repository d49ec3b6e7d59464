"""What each layer of the bench world holds, as lazily generated tar members.

- ``debian_layers``: the harness's Debian-like base (usr-merge, setuid,
  capabilities, devices, hard links, symlink chains) and its update layer
  (whiteouts, an opaque directory), at bench scale.
- ``top_layer``: the small layer each batch image adds (an app binary, its
  config and a few dozen scripts); a second version of one image's top
  layer is the "tag bump".
- ``whiteout_layers``: two more layers for the multi-layer image: directory
  and file whiteouts, an opaque directory over base content and over a
  directory the same image added, a path re-added after its whiteout.
- ``bulk_tree`` and ``bulk_files``: what makes the big image big, one layer
  of many mixed files and one of a few large ones (streamed).

Every recipe is a generator over harness vocabulary members, so only the
member being written is in memory; the same arguments give the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator

from tests.harness.debian import debian_like
from tests.harness.tarball import Member, dir, file, hardlink, opaque, symlink, whiteout

from .blobs import big_file
from .content import Content

__all__ = ["debian_layers", "top_layer", "whiteout_layers", "bulk_tree", "bulk_files",
           "MiB"]

MiB = 1 << 20
# Files at most this large are built in memory as one member; larger ones stream.
INLINE_MAX = 8 * MiB
# Bulk tree: mean file size per kind (bytes) and the share of files of each kind.
_TREE_KINDS = (("text", 24 * 1024, 0.45), ("binary", 220 * 1024, 0.4),
               ("packed", 300 * 1024, 0.15))
_KIND_MEANS = [(kind, mean) for kind, mean, _ in _TREE_KINDS]
_KIND_SHARES = [share for _, _, share in _TREE_KINDS]
_FILES_PER_MODULE = 12


def debian_layers(*, size: int, files: int, seed: int) -> tuple[tuple[Member, ...],
                                                                 tuple[Member, ...]]:
    """The harness's Debian-like (base, update) member tuples (held in memory: ~size)."""
    world = debian_like(size=size, files=files, seed=seed)
    return world.base, world.update


def top_layer(index: int, version: int, *, size: int, seed: int) -> Iterator[Member]:
    """One batch image's own layer: ~``size`` bytes under /usr/local and /etc/app."""
    c = Content(seed * 1_000_003 + index * 101 + version)
    name = f"app{index:02d}"
    yield dir("etc/app")
    yield file("etc/app/app.toml", f"[app]\nname = \"{name}\"\nversion = {version}\n".encode()
               + c.text(2048))
    yield file("etc/hostname", f"{name}-v{version}\n".encode())
    yield dir("usr/local/bin")
    yield file(f"usr/local/bin/{name}", c.binary(size * 6 // 10), mode=0o755)
    yield symlink("usr/local/bin/app", name)
    yield dir("usr/local/lib/app", mode=0o755)
    scripts = 40
    for i in range(scripts):
        yield file(f"usr/local/lib/app/mod{i:03d}.py", c.text(size * 4 // 10 // scripts))
    yield dir("var/lib/app", mode=0o750, uid=1000, gid=1000)
    yield file("var/lib/app/state.json", b"{}\n", mode=0o640, uid=1000, gid=1000)


def whiteout_layers(*, seed: int) -> tuple[list[Member], list[Member]]:
    """Two layers that delete, hide and re-add base content (OCI layer.md whiteouts)."""
    c = Content(seed * 7 + 3)
    first: list[Member] = []
    first += [whiteout(f"usr/share/doc/pkg{i:04d}") for i in range(10, 60)]
    first += [whiteout(f"usr/bin/pkg{i:04d}") for i in range(100, 120)]
    first += [dir("usr/share/man/man1"), opaque("usr/share/man/man1")]
    first += [file(f"usr/share/man/man1/tool{i}.1.gz", c.binary(6000)) for i in range(20)]
    first += [dir("opt/tool"), dir("opt/tool/bin"), dir("opt/tool/share")]
    first += [file("opt/tool/bin/tool", c.binary(400_000), mode=0o755),
              symlink("usr/bin/tool", "/opt/tool/bin/tool")]
    first += [file(f"opt/tool/share/data{i:02d}.txt", c.text(20_000)) for i in range(30)]
    second: list[Member] = [
        dir("opt/tool"), opaque("opt/tool"), dir("opt/tool/bin"),
        file("opt/tool/bin/tool", c.binary(450_000), mode=0o755),
        file("opt/tool/VERSION", b"2\n"),
        dir("usr/share/doc/pkg0010"),
        file("usr/share/doc/pkg0010/copyright", c.text(3000)),
        whiteout("etc/alternatives/awk"),
        hardlink("usr/local/bin/perl-link", "usr/bin/perl", mode=0o755),
        file("etc/hostname", b"layered\n"),
    ]
    return first, second


def bulk_tree(budget: int, *, seed: int) -> Iterator[Member]:
    """About ``budget`` bytes in many files of mixed kinds under /opt/suite."""
    c = Content(seed * 13 + 5)
    yield dir("opt/suite")
    used = 0
    module = 0
    while used < budget:
        base = f"opt/suite/mod{module:04d}"
        yield dir(base)
        yield dir(f"{base}/lib")
        yield dir(f"{base}/share")
        for i in range(_FILES_PER_MODULE):
            kind, mean = c.rng.choices(_KIND_MEANS, weights=_KIND_SHARES)[0]
            n = min(c.size(mean), INLINE_MAX, max(0, budget - used))
            sub = "share" if kind == "text" else "lib"
            yield file(f"{base}/{sub}/f{i:02d}.{kind}", c.make(kind, n),
                       mode=0o755 if kind == "binary" else 0o644)
            used += n
            if used >= budget:
                return
        module += 1


def bulk_files(budget: int, *, seed: int) -> Iterator[Member]:
    """About ``budget`` bytes in a few large files under /opt/data (streamed)."""
    c = Content(seed * 17 + 11)
    yield dir("opt/data")
    plan = [("model.bin", "binary", budget * 45 // 100),
            ("assets.pak", "packed", budget * 20 // 100),
            ("corpus.txt", "text", budget * 10 // 100)]
    left = budget - sum(size for _, _, size in plan)
    part = 0
    while left > 0:
        n = min(16 * MiB, left)
        plan.append((f"shard{part:03d}.bin", "binary", n))
        left -= n
        part += 1
    for name, kind, size in plan:
        yield from big_file(f"opt/data/{name}", c, kind, size)
