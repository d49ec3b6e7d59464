"""The pieces with an outside reference: the htree hash against debugfs's own
``dx_hash``, the crc32c convention, time and device encodings, extent tree shapes."""

from __future__ import annotations

import hashlib
import os
import random
import re
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from pipeline.ext4.native.checksum import ext4_crc
from pipeline.ext4.native.dirhash import half_md4, half_md4_many, seed_words
from pipeline.ext4.native.extents import build_tree, extents_for
from pipeline.ext4.native.inode import device_block, encode_time
from pipeline.ext4.output import sha256_sparse

SEED = "11111111-2222-4333-8444-666666666666"
NAMES = [b"a", b"hello", b"lost+found", b"x" * 31, b"y" * 32, b"z" * 33, b"w" * 255,
         "café".encode(), b"\xff\xfe\x80", b"\x80" * 70, b"name with spaces"]


def test_half_md4_matches_debugfs(tmp_path: os.PathLike[str]) -> None:
    """debugfs (e2fsprogs built on x86: signed chars) hashes each name as we do."""
    image = os.path.join(tmp_path, "tiny.ext4")
    subprocess.run(["mkfs.ext4", "-q", "-F", image, "1M"], check=True, capture_output=True)
    with tempfile.NamedTemporaryFile("wb", suffix=".debugfs") as script:
        for name in NAMES:
            quoted = name.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            script.write(b'dx_hash -h half_md4 -s ' + SEED.encode() + b' "' + quoted + b'"\n')
        script.flush()
        out = subprocess.run(["debugfs", "-f", script.name, image], capture_output=True,
                             check=True).stdout
    got = [(int(a, 16), int(b, 16)) for a, b in
           re.findall(rb"is 0x([0-9a-f]+) \(minor 0x([0-9a-f]+)\)", out)]
    seed = seed_words(uuid.UUID(SEED).bytes)
    assert got == [half_md4(n, seed, signed=True) for n in NAMES]


@pytest.mark.parametrize("signed", [True, False])
def test_half_md4_many_is_half_md4_of_each(signed: bool) -> None:
    """The lane-parallel hash against the scalar one: ASCII names of every length up to a
    chunk and past it, high bytes, the all-zero seed (MD4's constants)."""
    rng = random.Random(4)
    names = [bytes(rng.randrange(33, 127) for _ in range(n)) for n in range(1, 70)] * 3
    names += [bytes(rng.randrange(1, 256) for _ in range(rng.randint(1, 255)))
              for _ in range(200)] + NAMES
    for seed in (seed_words(uuid.UUID(SEED).bytes), seed_words(bytes(16))):
        assert half_md4_many(names, seed, signed=signed) == \
            [half_md4(n, seed, signed=signed) for n in names]


def test_unsigned_hash_differs_only_for_high_bytes() -> None:
    seed = seed_words(uuid.UUID(SEED).bytes)
    assert half_md4(b"plain", seed, signed=True) == half_md4(b"plain", seed, signed=False)
    assert half_md4(b"\xff", seed, signed=True) != half_md4(b"\xff", seed, signed=False)


def test_crc32c_is_ext4s_convention() -> None:
    # The standard CRC-32C check value is 0xE3069283; ext4 keeps the register uninverted.
    assert ext4_crc(0xFFFFFFFF, b"123456789") ^ 0xFFFFFFFF == 0xE3069283


@pytest.mark.parametrize("ns, large, want", [
    (0, True, (0, 0)),
    (1_700_000_000_000_000_005, True, (1_700_000_000, 5 << 2)),
    (-1, True, (2**32 - 1, 999_999_999 << 2)),                 # 1969: sign in the low word
    (2**31 * 10**9, True, (2**31, 1)),                          # 2038 + 1 s: epoch bit
    (2**40 * 10**9, True, ((3 * 2**32 - 2**31 - 1) & 0xFFFFFFFF, 2)),    # clamped
    (-(2**40) * 10**9, True, (2**31, 0)),                       # clamped to 1901
    (2**31 * 10**9, False, (2**31 - 1, 0)),                     # small inode: clamped
])
def test_time_encoding(ns: int, large: bool, want: tuple[int, int]) -> None:
    assert encode_time(ns, large=large) == want


def test_device_encodings() -> None:
    assert device_block("d", 1, 3)[:8] == bytes.fromhex("0301000000000000")
    assert device_block("d", 259, 70000)[:8] == (b"\0" * 4 + (
        (70000 & 0xFF) | 259 << 8 | (70000 & ~0xFF) << 12).to_bytes(4, "little"))


def test_extent_trees_grow_levels_as_needed() -> None:
    counter = iter(range(10**6, 2 * 10**6))
    four = [(i * 2, 100 + i * 2, 1) for i in range(4)]
    root, blocks = build_tree(four, lambda: next(counter), None)
    assert blocks == [] and root[6] == 0                       # depth 0 in the inode
    many = [(i * 2, 100 + i * 2, 1) for i in range(341 * 4 + 1)]
    root, blocks = build_tree(many, lambda: next(counter), 7)
    assert root[6] == 2 and len(blocks) == 5 + 1               # 5 leaves, 1 index block
    assert extents_for(0, [(10, 70000)]) == [(0, 10, 32768), (32768, 32778, 32768),
                                            (65536, 65546, 4464)]


def test_copy_starts_writeback_over_the_copied_range_and_survives_its_refusal(
        tmp_path: Path) -> None:
    """Through the page cache, the copy asks the kernel to start writing back what it
    copied, in order and covering the whole data range; where the call fails the bytes
    are the same."""
    from pipeline.ext4.native import copyjobs

    sources = []
    for i, size in enumerate((100, 70 << 20, 5000)):     # gathered, copy_file_range, gathered
        src = tmp_path / f"f{i}"
        src.write_bytes(bytes([i + 1]) * size)
        sources.append((src, size))
    jobs, block = [], 0
    for src, size in sources:
        count = -(-size // 4096)
        jobs.append(copyjobs.encode_job(str(src), None, size, [(0, block, count)]))
        block += count
    data = copyjobs.encode_jobs(jobs, 0, block * 4096)
    expected = b"".join(src.read_bytes().ljust(-(-size // 4096) * 4096, b"\0")
                        for src, size in sources)
    for refuse in (False, True):
        calls: list[tuple[int, int]] = []

        def fake(fd: int, offset: int, length: int, flags: int, refuse: bool = refuse) -> int:
            calls.append((offset, length))
            assert flags == 2                               # SYNC_FILE_RANGE_WRITE only
            return -1 if refuse else 0

        out = tmp_path / f"image-{refuse}"
        fd = os.open(out, os.O_RDWR | os.O_CREAT)
        try:
            original = copyjobs._Done.__init__

            def patched(self: copyjobs._Done, out: copyjobs._Out, first: int) -> None:
                original(self, out, first)
                assert out.direct < 0                       # through the page cache
                self.call = fake

            copyjobs._Done.__init__ = patched               # type: ignore[method-assign]
            try:
                copyjobs.copy_jobs(data, fd, dense=True, direct=False)
            finally:
                copyjobs._Done.__init__ = original          # type: ignore[method-assign]
        finally:
            os.close(fd)
        assert out.read_bytes() == expected
        if refuse:
            assert len(calls) == 1                          # refused once, never asked again
        else:
            assert calls[0][0] == 0 and len(calls) >= 2
            assert all(a + n == b for (a, n), (b, _) in zip(calls, calls[1:]))
            assert calls[-1][0] + calls[-1][1] == block * 4096


def _direct_io_here(directory: Path) -> bool:
    probe = directory / ".direct-probe"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_DIRECT)
    except OSError:
        return False
    os.close(fd)
    probe.unlink()
    return True


@pytest.mark.parametrize("refused", [False, True])
def test_the_copy_writes_around_the_page_cache_and_falls_back_when_refused(
        tmp_path: Path, refused: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the image's filesystem takes O_DIRECT, every byte goes through the direct
    descriptor (small files gathered, a large one 4 MiB at a time, its last block
    padded); where a direct write is refused with EINVAL, that write and all later ones
    go through the page cache, and the bytes are the same either way."""
    from pipeline.ext4.native import copyjobs

    if not _direct_io_here(tmp_path):
        pytest.skip("this filesystem refuses O_DIRECT")
    rng = random.Random(11)
    jobs, block, expected = [], 0, bytearray()
    for i, size in enumerate((100, (9 << 20) + 123, 5000, 300_000, 1)):
        src = tmp_path / f"f{i}"
        data = rng.randbytes(size)
        src.write_bytes(data)
        count = -(-size // 4096)
        jobs.append(copyjobs.encode_job(str(src), None, size, [(0, block, count)]))
        expected += data.ljust(count * 4096, b"\0")
        block += count
    writes: list[tuple[bool, int, int]] = []
    real_pwrite = os.pwrite
    direct_fds: set[int] = set()
    real_open = os.open

    def spy_open(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        if flags & os.O_DIRECT:
            direct_fds.add(fd)
        return fd

    def spy_pwrite(fd: int, data: memoryview, offset: int) -> int:
        if fd in direct_fds and refused and len(writes) == 2:
            raise OSError(22, "Invalid argument")
        writes.append((fd in direct_fds, offset, len(data)))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(copyjobs.os, "open", spy_open)
    monkeypatch.setattr(copyjobs.os, "pwrite", spy_pwrite)
    out = tmp_path / "image"
    fd = real_open(out, os.O_RDWR | os.O_CREAT)
    try:
        copyjobs.copy_jobs(copyjobs.encode_jobs(jobs, 0, block * 4096), fd, dense=True)
    finally:
        os.close(fd)
    assert out.read_bytes() == bytes(expected)
    assert all(offset % 4096 == 0 and length % 4096 == 0 for _, offset, length in writes)
    direct = [d for d, _, _ in writes]
    if refused:
        assert direct[:2] == [True, True] and not any(direct[2:])
    else:
        assert all(direct) and len(writes) >= 4


def test_copied_runs_are_hashed_from_their_sources_not_the_image(tmp_path: Path) -> None:
    """The image's digest takes the bytes of copied runs from their content files (the
    image may not hold them yet: here it holds garbage there), everything else from the
    image, holes as zeros; the result is the digest of the finished image."""
    rng = random.Random(5)
    pack = tmp_path / "pack"
    pack.write_bytes(rng.randbytes(3 << 20))
    other = tmp_path / "other"
    other.write_bytes(rng.randbytes(5000))
    image = tmp_path / "image"
    meta, tail = rng.randbytes(8192), rng.randbytes(4096)
    runs = [(3 * 4096, 10_000, str(pack), 777, 3 * 4096 - 10_000),      # a small file
            (6 * 4096, 2 << 20, str(pack), 123_456, 0),                 # a large one
            (6 * 4096 + (2 << 20), 5000, str(other), 0, 4096 - 5000 % 4096)]
    finished = bytearray(64 << 20)                                      # holes stay zeros
    finished[0:8192] = meta
    finished[(40 << 20):(40 << 20) + 4096] = tail
    for offset, length, source, start, zeros in runs:
        finished[offset:offset + length] = Path(source).read_bytes()[start:start + length]
    with open(image, "wb") as f:
        f.truncate(64 << 20)
        f.write(meta)
        f.seek(40 << 20)
        f.write(tail)
        for offset, length, _, _, zeros in runs:                        # not copied yet
            f.seek(offset)
            f.write(b"\xee" * (length + zeros))
    assert sha256_sparse(image, copied=runs) == hashlib.sha256(finished).hexdigest()
    assert sha256_sparse(image) != hashlib.sha256(finished).hexdigest()
    with pytest.raises(AssertionError, match="overlaps"):
        sha256_sparse(image, copied=[runs[1], runs[0]])
