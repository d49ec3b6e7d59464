"""A Debian-like root filesystem in two layers, generated fast and deterministically.

The base layer looks like a usr-merged Debian 12 image: ``bin``, ``sbin``,
``lib``, ``lib64`` are symlinks into ``usr``; setuid-root ``passwd``, ``su``,
``mount``...; setgid ``chage``/``wall``; ``ping`` with a binary
``security.capability`` xattr; ``/tmp`` and ``/var/tmp`` sticky 1777; hard
links; absolute and relative symlink chains (``/etc/alternatives``); files
owned by uids/gids other than 0; device nodes and a fifo; and a few thousand
files under ``/usr/share/doc`` and ``/usr/share/man``. The update layer
whiteouts a file and a directory, makes ``var/cache/apt`` opaque, rewrites
files, adds a hard link to a base-layer file and retargets a symlink.

With ``busybox=True`` the host's static busybox (Debian's busybox-static) is
``usr/bin/busybox`` and ``usr/bin/sh`` links to it, so ``/bin/sh`` works through
the usr-merge symlink and the image can boot under qemu with ``init=/bin/sh``.
Members are written as ``usr/bin/...``, never through the ``bin`` symlink.
"""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass
from pathlib import Path

from .expected import expected_tree
from .layers import Layer, make_layer
from .tarball import Member, blockdev, chardev, dir, fifo, file, hardlink, opaque, symlink, whiteout

__all__ = ["DebianLike", "debian_like", "PING_CAPABILITY", "BUSYBOX"]

BUSYBOX = Path("/bin/busybox")
PING_CAPABILITY = bytes.fromhex("0100000200200000000000000000000000000000")
"""vfs_cap_data revision 2 with cap_net_raw (bit 13) permitted, effective flag set."""
_CORPUS_BYTES = 256 * 1024
_WORDS = ("debian package copyright license free software gnu general public version "
          "warranty merchantability fitness purpose distribute modify terms conditions "
          "upstream maintainer changelog urgency medium low unstable bookworm security "
          "fix update release notes binary source library runtime shared object").split()


@functools.lru_cache(maxsize=1)
def _busybox() -> bytes:
    if not BUSYBOX.exists():
        raise RuntimeError(f"{BUSYBOX} is missing: install Debian's busybox-static "
                           "(scripts/test.sh does)")
    return BUSYBOX.read_bytes()


@dataclass(frozen=True, slots=True)
class DebianLike:
    """The two layers' members; build blobs with :meth:`layers`."""

    base: tuple[Member, ...]
    update: tuple[Member, ...]

    def layers(self, compression: str = "gzip") -> tuple[Layer, Layer]:
        return (make_layer(self.base, compression=compression),
                make_layer(self.update, compression=compression))

    def expected(self) -> dict[str, Member]:
        """What the two layers flatten to (see :func:`expected_tree`)."""
        return expected_tree([self.base, self.update])

    def expected_base(self) -> dict[str, Member]:
        return expected_tree([self.base])


class _Gen:
    def __init__(self, seed: int, budget: int, regular: int) -> None:
        self.rng = random.Random(seed)
        self.corpus = " ".join(self.rng.choices(_WORDS, k=_CORPUS_BYTES // 6)).encode()
        self.per_file = max(1, budget // max(1, regular))

    def size(self) -> int:
        # Heavy-tailed like real trees: most files small, a few large.
        return max(0, int(self.rng.expovariate(1.0) * self.per_file))

    def text(self, n: int | None = None) -> bytes:
        n = self.size() if n is None else n
        start = self.rng.randrange(len(self.corpus))
        out = (self.corpus[start:] + self.corpus) * (1 + n // len(self.corpus))
        return out[:n]

    def binary(self, n: int | None = None) -> bytes:
        n = self.size() if n is None else n
        # Half noise, half zeros: compresses about 2:1, like real executables.
        return b"\x7fELF" + self.rng.randbytes(n // 2) + bytes(max(0, n - n // 2 - 4))


def _base(g: _Gen, files: int, busybox: bool) -> list[Member]:
    m: list[Member] = []
    for d in ("boot", "dev", "etc", "home", "media", "mnt", "opt", "proc", "run", "srv", "sys",
              "usr", "usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "usr/lib/x86_64-linux-gnu",
              "usr/local", "usr/local/bin", "usr/share", "usr/share/doc", "usr/share/man",
              "usr/share/man/man1", "var", "var/lib", "var/lib/dpkg", "var/lib/dpkg/info",
              "var/log", "var/cache", "var/cache/apt", "var/spool", "etc/alternatives",
              "etc/apt", "etc/default", "etc/ssl", "etc/ssl/certs"):
        m.append(dir(d))
    m += [dir("root", mode=0o700), dir("tmp", mode=0o1777), dir("var/tmp", mode=0o1777),
          dir("var/mail", mode=0o2775, gid=8), dir("var/cache/man", mode=0o755, uid=6, gid=12),
          dir("home/user", mode=0o750, uid=1000, gid=1000)]
    for link in ("bin", "sbin", "lib", "lib64"):
        m.append(symlink(link, f"usr/{link}"))
    m += [file("etc/hostname", b"debian-like\n"), file("etc/debian_version", b"12.5\n"),
          file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nman:x:6:12::/var/cache/man:/"
                             b"usr/sbin/nologin\nuser:x:1000:1000::/home/user:/bin/sh\n"),
          file("etc/group", b"root:x:0:\nmail:x:8:\nman:x:12:\nshadow:x:42:\nuser:x:1000:\n"),
          file("etc/shadow", b"root:*:19000:0:99999:7:::\n", mode=0o640, gid=42),
          file("usr/lib/os-release", b'PRETTY_NAME="Debian-like 12"\nID=debian\n'),
          symlink("etc/os-release", "../usr/lib/os-release"),
          file("etc/motd", g.text(200)), file("etc/apt/sources.list", g.text(300))]
    for name, mode, gid in (("passwd", 0o4755, 0), ("su", 0o4755, 0), ("mount", 0o4755, 0),
                            ("umount", 0o4755, 0), ("newgrp", 0o4755, 0), ("chsh", 0o4755, 0),
                            ("chage", 0o2755, 42), ("expiry", 0o2755, 42), ("wall", 0o2755, 5)):
        m.append(file(f"usr/bin/{name}", g.binary(), mode=mode, gid=gid))
    m.append(file("usr/bin/ping", g.binary(), mode=0o755,
                  xattrs={"security.capability": PING_CAPABILITY}))
    m += [file("usr/bin/perl", g.binary(), mode=0o755),
          hardlink("usr/bin/perl5.36.0", "usr/bin/perl", mode=0o755),
          file("usr/bin/mawk", g.binary(), mode=0o755),
          symlink("etc/alternatives/awk", "/usr/bin/mawk"),
          symlink("usr/bin/awk", "/etc/alternatives/awk"),
          file("usr/bin/vim.tiny", g.binary(), mode=0o755),
          symlink("etc/alternatives/vi", "/usr/bin/vim.tiny"),
          symlink("usr/bin/vi", "/etc/alternatives/vi"),
          file("usr/lib/x86_64-linux-gnu/libz.so.1.2.13", g.binary(), mode=0o644),
          symlink("usr/lib/x86_64-linux-gnu/libz.so.1", "libz.so.1.2.13"),
          symlink("usr/lib/x86_64-linux-gnu/libz.so", "libz.so.1"),
          symlink("usr/lib64/ld-linux-x86-64.so.2", "../lib/x86_64-linux-gnu/ld.so"),
          file("usr/lib/x86_64-linux-gnu/ld.so", g.binary(), mode=0o755),
          file("var/cache/man/index.db", g.binary(), uid=6, gid=12),
          file("home/user/.profile", g.text(120), uid=1000, gid=1000),
          file("var/mail/user", b"", mode=0o660, uid=1000, gid=8),
          chardev("dev/null", 1, 3), chardev("dev/zero", 1, 5), chardev("dev/full", 1, 7),
          chardev("dev/random", 1, 8), chardev("dev/urandom", 1, 9), chardev("dev/tty", 5, 0),
          chardev("dev/console", 5, 1, mode=0o600), blockdev("dev/loop0", 7, 0),
          blockdev("dev/sda", 8, 0), fifo("run/initctl", mode=0o600),
          file("var/cache/apt/pkgcache.bin", g.binary()),
          file("var/cache/apt/srcpkgcache.bin", g.binary())]
    if busybox:
        m += [file("usr/bin/busybox", _busybox(), mode=0o755), symlink("usr/bin/sh", "busybox")]
    else:
        m.append(file("usr/bin/dash", g.binary(), mode=0o755))
        m.append(symlink("usr/bin/sh", "dash"))
    # The bulk: per-package docs, man pages, dpkg lists and a few more binaries.
    packages = max(1, (files - len(m)) // 6)
    for i in range(packages):
        pkg = f"pkg{i:04d}"
        m += [dir(f"usr/share/doc/{pkg}"),
              file(f"usr/share/doc/{pkg}/copyright", g.text()),
              file(f"usr/share/doc/{pkg}/changelog.Debian.gz", g.binary()),
              file(f"usr/share/man/man1/{pkg}.1.gz", g.binary()),
              file(f"var/lib/dpkg/info/{pkg}.list", f"/usr/share/doc/{pkg}\n".encode()),
              file(f"usr/bin/{pkg}", g.binary(), mode=0o755)]
    return m


def _update(g: _Gen) -> list[Member]:
    return [file("etc/hostname", b"debian-like-updated\n"),
            file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::"
                               b"/home/user:/bin/sh\nextra:x:1001:1001::/nonexistent:/bin/false\n"),
            whiteout("etc/motd"),
            whiteout("usr/share/doc/pkg0000"),
            dir("var/cache/apt"), opaque("var/cache/apt"),
            file("var/cache/apt/fresh.bin", g.binary(64)),
            file("usr/local/bin/app", g.binary(4096), mode=0o755),
            hardlink("usr/local/bin/perl-again", "usr/bin/perl", mode=0o755),
            symlink("etc/alternatives/vi", "/usr/bin/mawk"),
            dir("tmp", mode=0o1777)]


def debian_like(*, size: int = 4 << 20, files: int = 3000, seed: int = 0,
                busybox: bool = False) -> DebianLike:
    """A Debian-like tree of about ``files`` entries holding about ``size`` bytes of
    regular-file data (plus ~2 MB when ``busybox``), reproducible from ``seed``."""
    g = _Gen(seed, size, regular=max(1, files * 5 // 6))
    return DebianLike(tuple(_base(g, files, busybox)), tuple(_update(g)))
