"""Boot test: an ext4 built without root boots under qemu and the kernel agrees with it.

The image is the harness's Debian-like tree with Debian's static busybox as
``/usr/bin/busybox`` (``/bin/sh`` through the usr-merge symlink), plus an init
script and a few entries the kernel must decode exactly: devices with large
major and minor numbers (the "new" encoding), non-root owners, setgid
directories. It is built by uid 65534 (or by the current user when the suite
is not root), booted with Debian's own kernel and initrd under TCG software
emulation (``root=/dev/vda``, virtio disk, serial console), and its init, run
by the image's own ``/bin/sh``, prints what the kernel says about every
setuid, setgid and sticky file, every device node and fifo, every path it
finds (every directory listed) and the sha256 of every regular file, each
opened by its path (so a directory of thousands of entries, which has an htree
index, is searched by the kernel's hashed lookup); the test checks each line
against what the image declared. It runs for the native writer and for
mkfs.ext4.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest

from pipeline.ext4.options import Ext4Options
from pipeline.flat.image import FileType
from tests.ext4.test_build import (
    Spec,
    bdev,
    build_as_nobody,
    build_flat,
    cdev,
    d,
    f,
    fifo,
    make_flat,
    shared_dir,
    specs_from_members,
)
from tests.harness.debian import debian_like
from tests.harness.ext4reader import Ext4Image

# End to end with real tools: seconds per test (the fast loop skips them).
pytestmark = pytest.mark.slow

__all__ = ["shared_dir"]                     # the fixture, imported for this module

# TCG boots Debian's kernel and initramfs in about 25 s on one core; four times
# that is a hung guest, not a slow one.
BOOT_TIMEOUT_SECONDS = 120
INIT_PATH = "usr/sbin/rootfs-boot-test"
HASHED = ("usr/bin/busybox", "etc/passwd", "usr/bin/su")
INIT = f"""#!/bin/sh
# Run by the image's own /bin/sh as PID 1 (the kernel reads the #! line).
export PATH=/usr/bin:/usr/sbin
# The initramfs moved its devtmpfs, /run, /proc and /sys into the root: get
# them out of the way so the image's own /dev and /run are what we see.
for m in /dev /run /proc /sys; do busybox umount -l $m 2>/dev/null; done
# Kernel messages would split the listing's lines: keep them off the console while it
# runs, then print the ext4 ones (and let the console have them again).
busybox dmesg -n 1
echo ROOTFS-BOOT-BEGIN
busybox find / -xdev \\( -type c -o -type b -o -type p -o -perm -4000 -o -perm -2000 \\
    -o -perm -1000 \\) -exec busybox stat -c 'ROOTFS-STAT %u %g %a %t %T %h %F|%n' {{}} \\;
busybox sha256sum {" ".join("/" + p for p in HASHED)} | busybox sed 's/^/ROOTFS-SHA /'
busybox find / -xdev | busybox sed 's/^/ROOTFS-PATH /'
busybox find / -xdev -type f -exec busybox sha256sum {{}} + | busybox sed 's/^/ROOTFS-FILE /'
echo ROOTFS-BOOT-END
busybox dmesg -n 7
busybox dmesg | busybox grep 'EXT4-fs' | busybox sed 's/^/ROOTFS-KMSG /'
# The kernel's ext4lazyinit thread prefetches block bitmaps after the mount; a
# forced power-off under it reads a vanished disk and logs an EXT4-fs error
# that says nothing about the image. A read-only remount stops that thread and
# flushes, as a clean shutdown does.
busybox sync
busybox mount -n -o remount,ro /dev/vda /
busybox poweroff -f
""".encode()

EXTRA: list[Spec] = [
    f(INIT_PATH, INIT, 0o755),
    bdev("dev/nvme0n1p300", 259, 300, 0o640, gid=6),
    cdev("dev/big-minor", 10, 1048575, 0o604, uid=7, gid=9),
    cdev("dev/huge-major", 4095, 255, 0o600),
    cdev("dev/tty0", 4, 0, 0o620, gid=5),
    f("usr/local/bin/setuid-user", b"#!/bin/sh\n", 0o4750, uid=1000, gid=1000),
    f("usr/local/bin/setgid-only", b"#!/bin/sh\n", 0o2711, gid=50),
    d("srv/shared", 0o3770, uid=1000, gid=100),
    fifo("srv/pipe", 0o620, uid=1000, gid=100),
]
# Thousands of entries: with the native writer an htree directory (dir_index), which the
# kernel searches by hashed lookup; mkfs.ext4 -d writes directories linear.
MANY: list[Spec] = [d("srv/many"), *[f(f"srv/many/entry-{i:05d}-{'n' * 24}", f"{i}\n".encode())
                                     for i in range(3000)]]
INDEX_FL = 0x1000                          # ext4 inode flag: the directory has an htree
_TYPE_NAMES = {"character special file": "c", "block special file": "b", "fifo": "p",
               "regular file": "f", "directory": "d"}
_STAT_RE = re.compile(r"ROOTFS-STAT (\d+) (\d+) ([0-7]+) ([0-9a-f]+) ([0-9a-f]+) (\d+) "
                      r"([a-z ]+)\|(/.*)")


def boot_image(image: Path) -> str:
    """Boot ``image`` as the root disk; return the serial console output."""
    kernels = sorted(glob.glob("/boot/vmlinuz-*"))
    assert kernels, "no /boot/vmlinuz-*: install linux-image-amd64 (scripts/test.sh does)"
    kernel = kernels[-1]
    initrd = kernel.replace("vmlinuz", "initrd.img")
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-smp", "1", "-m", "512", "-nographic",
            "-no-reboot", "-monitor", "none", "-kernel", kernel, "-initrd", initrd,
            "-append", f"root=/dev/vda rw console=ttyS0 init=/{INIT_PATH} panic=-1",
            "-drive", f"file={image},format=raw,if=virtio"]
    try:
        proc = subprocess.run(argv, capture_output=True, timeout=BOOT_TIMEOUT_SECONDS,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as err:
        tail = (err.stdout or b"")[-3000:].decode(errors="replace")
        raise AssertionError(f"the guest did not power off within {BOOT_TIMEOUT_SECONDS} s; "
                             f"console tail:\n{tail}") from None
    console = proc.stdout.decode(errors="replace").replace("\r", "")
    assert proc.returncode == 0, console[-3000:] + proc.stderr.decode(errors="replace")
    return console


def declared(specs: list[Spec]) -> tuple[dict[str, tuple], dict[str, str]]:
    """What the guest must print: stat lines by absolute path, and content hashes."""
    by_path = {s.path: s for s in specs}
    nlink: dict[str, int] = {}
    for s in specs:
        if s.link is not None:
            nlink[s.link] = nlink.get(s.link, 1) + 1
    stats = {}
    for s in specs:
        base = by_path[s.link] if s.link is not None else s
        special = base.type in (FileType.CHAR, FileType.BLOCK, FileType.FIFO)
        if not special and not base.mode & 0o7000:
            continue
        if base.type is FileType.DIRECTORY:
            links = 2 + sum(1 for o in specs if o.type is FileType.DIRECTORY
                            and o.path.rpartition("/")[0] == base.path)
        else:
            links = nlink.get(base.path, 1)
        stats["/" + s.path] = (base.uid, base.gid, base.mode & 0o7777,
                               base.rdev or (0, 0), links, base.type.value)
    hashes = {"/" + p: hashlib.sha256(by_path[p].data).hexdigest() for p in HASHED}
    return stats, hashes


@pytest.mark.parametrize("build", ["native", "full"])
def test_rootless_image_boots_and_the_kernel_sees_what_was_declared(shared_dir: Path,
                                                                    build: str) -> None:
    specs = specs_from_members(debian_like(files=300, size=2 << 20, busybox=True).expected())
    specs += MANY + EXTRA
    flat = make_flat(shared_dir / "flat", specs, staging=build != "native")
    out = shared_dir / "out"
    out.mkdir()
    image = out / "boot.ext4"
    if os.geteuid() == 0:
        os.chown(out, 65534, 65534)
    builder = "native" if build == "native" else "mkfs"
    if os.geteuid() == 0:
        build_as_nobody(flat, image, builder)
    else:                                    # already unprivileged
        build_flat(flat, image, Ext4Options(), seed="seed", builder=builder)
    if build == "native":
        with Ext4Image(image) as fs:
            many = fs.walk()["srv/many"]
            assert struct.unpack_from("<I", fs.raw_inode(many.ino), 0x20)[0] & INDEX_FL

    console = boot_image(image)
    assert "ROOTFS-BOOT-END" in console, console[-3000:]
    assert "EXT4-fs (vda): mounted filesystem" in console
    assert "EXT4-fs (vda): re-mounted" in console     # read-only before the power-off
    assert not re.search(r"EXT4-fs (error|warning)", console), console
    body = console.split("ROOTFS-BOOT-BEGIN", 1)[1].split("ROOTFS-BOOT-END", 1)[0]
    seen: dict[str, tuple] = {}
    hashes: dict[str, str] = {}
    paths: set[str] = set()
    files: dict[str, str] = {}
    for line in body.splitlines():
        if match := _STAT_RE.fullmatch(line.strip()):
            uid, gid, mode, major, minor, links, kind, path = match.groups()
            seen[path] = (int(uid), int(gid), int(mode, 8), (int(major, 16), int(minor, 16)),
                          int(links), _TYPE_NAMES[kind])
        elif line.startswith("ROOTFS-SHA "):
            digest, path = line.split()[1:3]
            hashes[path] = digest
        elif line.startswith("ROOTFS-PATH "):
            paths.add(line.strip().split(" ", 1)[1])
        elif line.startswith("ROOTFS-FILE "):
            digest, path = line.strip().split(" ", 1)[1].split("  ", 1)
            files[path] = digest
    want_stats, want_hashes = declared(specs)
    assert seen == want_stats
    assert hashes == want_hashes
    # Every directory listed, every regular file read whole by its path.
    assert paths == {"/", "/lost+found"} | {"/" + s.path for s in specs}
    by_path = {s.path: s for s in specs}
    assert files == {"/" + s.path: hashlib.sha256(by_path[s.link or s.path].data).hexdigest()
                     for s in specs if by_path[s.link or s.path].type is FileType.REGULAR}
    # The extras really exercise what they are there for.
    assert seen["/dev/huge-major"][3] == (4095, 255)
    assert seen["/dev/big-minor"][3] == (10, 1048575)
    assert seen["/usr/local/bin/setuid-user"][:3] == (1000, 1000, 0o4750)
