"""The htree name hash: half MD4 with the filesystem's seed (e2fsprogs lib/ext2fs/dirhash.c).

Names are read 32 bytes at a time into eight 32-bit words; each byte enters
as a signed or an unsigned char, as the superblock's
``signed_directory_hash``/``unsigned_directory_hash`` flag says (mke2fs on
x86 sets signed, and so do we, on every host). The major hash has its low
bit cleared (the kernel uses it to mark a hash continued in the next leaf).

``half_md4_many`` hashes a directory's names together: those of one chunk
in plain ASCII (nearly all) run through one transform whose every 32-bit
word is a 64-bit lane of one Python integer, one lane per name. Additions
never carry out of a lane (five 32-bit terms at most), a rotation's bits
that cross into the next lane down land above bit 32 and are masked off,
so each big-integer operation does the work of a thousand names in C.

Trusts nothing: pure arithmetic on the name bytes and the seed.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

__all__ = ["half_md4", "half_md4_many", "seed_words"]

_MASK = 0xFFFFFFFF
_K2 = 0o13240474631
_K3 = 0o15666365641
_DEFAULT_SEED = (0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476)
_EOF_HASH = 0x7FFFFFFF << 1 & _MASK       # reserved: the end of the htree
_CHUNK = 32


def seed_words(hash_seed: bytes) -> tuple[int, int, int, int]:
    """The four seed words of ``s_hash_seed`` (the MD4 constants when it is all zero)."""
    a, b, c, d = struct.unpack("<4I", hash_seed)
    return (a, b, c, d) if a or b or c or d else _DEFAULT_SEED


def _str2hashbuf(chunk: bytes, length: int, signed: bool) -> list[int]:
    pad = (length | length << 8) & _MASK
    pad = (pad | pad << 16) & _MASK
    if chunk.isascii():
        # Signed or not, ASCII bytes enter alike: whole words are big-endian reads,
        # a partial last word is shifted in on top of the padding.
        n = min(length, _CHUNK)
        whole = n // 4
        out = list(struct.unpack_from(f">{whole}I", chunk)) if whole else []
        if whole < 8:
            rest = n - 4 * whole
            out.append(((pad << (8 * rest)) + int.from_bytes(chunk[4 * whole:n], "big"))
                       & _MASK)
            out += [pad] * (7 - whole)
        return out
    out = []
    val = pad
    n = min(length, _CHUNK)
    for i in range(n):
        c = chunk[i]
        if signed and c >= 0x80:
            c -= 0x100
        val = (c + (val << 8)) & _MASK
        if i % 4 == 3:
            out.append(val)
            val = pad
    if len(out) < 8:
        out.append(val)
    while len(out) < 8:
        out.append(pad)
    return out


def _transform(buf: list[int], x: list[int]) -> None:
    """halfMD4Transform, unrolled: three rounds of eight steps (F, G, H)."""
    a, b, c, d = buf
    x0, x1, x2, x3, x4, x5, x6, x7 = x
    # Round 1: F
    t = (a + (d ^ (b & (c ^ d))) + x0) & _MASK
    a = ((t << 3) | (t >> 29)) & _MASK
    t = (d + (c ^ (a & (b ^ c))) + x1) & _MASK
    d = ((t << 7) | (t >> 25)) & _MASK
    t = (c + (b ^ (d & (a ^ b))) + x2) & _MASK
    c = ((t << 11) | (t >> 21)) & _MASK
    t = (b + (a ^ (c & (d ^ a))) + x3) & _MASK
    b = ((t << 19) | (t >> 13)) & _MASK
    t = (a + (d ^ (b & (c ^ d))) + x4) & _MASK
    a = ((t << 3) | (t >> 29)) & _MASK
    t = (d + (c ^ (a & (b ^ c))) + x5) & _MASK
    d = ((t << 7) | (t >> 25)) & _MASK
    t = (c + (b ^ (d & (a ^ b))) + x6) & _MASK
    c = ((t << 11) | (t >> 21)) & _MASK
    t = (b + (a ^ (c & (d ^ a))) + x7) & _MASK
    b = ((t << 19) | (t >> 13)) & _MASK
    # Round 2: G
    t = (a + ((b & c) + ((b ^ c) & d)) + x1 + _K2) & _MASK
    a = ((t << 3) | (t >> 29)) & _MASK
    t = (d + ((a & b) + ((a ^ b) & c)) + x3 + _K2) & _MASK
    d = ((t << 5) | (t >> 27)) & _MASK
    t = (c + ((d & a) + ((d ^ a) & b)) + x5 + _K2) & _MASK
    c = ((t << 9) | (t >> 23)) & _MASK
    t = (b + ((c & d) + ((c ^ d) & a)) + x7 + _K2) & _MASK
    b = ((t << 13) | (t >> 19)) & _MASK
    t = (a + ((b & c) + ((b ^ c) & d)) + x0 + _K2) & _MASK
    a = ((t << 3) | (t >> 29)) & _MASK
    t = (d + ((a & b) + ((a ^ b) & c)) + x2 + _K2) & _MASK
    d = ((t << 5) | (t >> 27)) & _MASK
    t = (c + ((d & a) + ((d ^ a) & b)) + x4 + _K2) & _MASK
    c = ((t << 9) | (t >> 23)) & _MASK
    t = (b + ((c & d) + ((c ^ d) & a)) + x6 + _K2) & _MASK
    b = ((t << 13) | (t >> 19)) & _MASK
    # Round 3: H
    t = (a + (b ^ c ^ d) + x3 + _K3) & _MASK
    a = ((t << 3) | (t >> 29)) & _MASK
    t = (d + (a ^ b ^ c) + x7 + _K3) & _MASK
    d = ((t << 9) | (t >> 23)) & _MASK
    t = (c + (d ^ a ^ b) + x2 + _K3) & _MASK
    c = ((t << 11) | (t >> 21)) & _MASK
    t = (b + (c ^ d ^ a) + x6 + _K3) & _MASK
    b = ((t << 15) | (t >> 17)) & _MASK
    t = (a + (b ^ c ^ d) + x1 + _K3) & _MASK
    a = ((t << 3) | (t >> 29)) & _MASK
    t = (d + (a ^ b ^ c) + x5 + _K3) & _MASK
    d = ((t << 9) | (t >> 23)) & _MASK
    t = (c + (d ^ a ^ b) + x0 + _K3) & _MASK
    c = ((t << 11) | (t >> 21)) & _MASK
    t = (b + (c ^ d ^ a) + x4 + _K3) & _MASK
    b = ((t << 15) | (t >> 17)) & _MASK
    buf[0] = (buf[0] + a) & _MASK
    buf[1] = (buf[1] + b) & _MASK
    buf[2] = (buf[2] + c) & _MASK
    buf[3] = (buf[3] + d) & _MASK


def half_md4(name: bytes, seed: tuple[int, int, int, int], *, signed: bool) -> tuple[int, int]:
    """(major hash, minor hash) of ``name``, as ext2fs_dirhash computes them."""
    buf = list(seed)
    length = len(name)
    pos = 0
    while True:
        _transform(buf, _str2hashbuf(name[pos:], length - pos, signed))
        pos += _CHUNK
        if pos >= length:
            break
    major = buf[1] & ~1 & _MASK
    if major == _EOF_HASH:
        major = (0x7FFFFFFF - 1) << 1
    return major, buf[2]


_LANE = 8                                  # bytes per lane: 32 bits of value, 32 of headroom
_PADS = [bytes([n]) * _CHUNK for n in range(_CHUNK + 1)]


def half_md4_many(names: Sequence[bytes], seed: tuple[int, int, int, int], *,
                  signed: bool) -> list[tuple[int, int]]:
    """``[half_md4(name, seed, signed=signed) for name in names]``, computed in bulk."""
    out: list[tuple[int, int]] = [(0, 0)] * len(names)
    where: list[int] = []
    chunks: list[bytes] = []
    for i, name in enumerate(names):
        n = len(name)
        if n <= _CHUNK and name.isascii():
            # The chunk as _str2hashbuf reads it, big-endian words: the whole words of the
            # name, the pad byte (the length) before the last partial word, then pad words.
            whole = 4 * (n // 4)
            pad = _PADS[n]
            chunks.append(name if n == _CHUNK else
                          name[:whole] + pad[:4 - (n - whole)] + name[whole:] + pad[:28 - whole])
            where.append(i)
        else:
            out[i] = half_md4(name, seed, signed=signed)
    if where:
        for i, hashed in zip(where, _lanes(b"".join(chunks), len(where), seed), strict=True):
            out[i] = hashed
    return out


def _lanes(data: bytes, count: int, seed: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """(major, minor) of ``count`` names whose 32-byte chunks ``data`` holds."""
    ones = int.from_bytes(b"\1" + bytes(_LANE - 1), "little")
    ones = int.from_bytes(ones.to_bytes(_LANE, "little") * count, "little")
    m = _MASK * ones                       # the low 32 bits of every lane
    k2, k3 = _K2 * ones, _K3 * ones
    x = []
    for word in range(8):                  # word i of every name, big-endian, into lanes
        lanes = bytearray(_LANE * count)
        for byte in range(4):
            lanes[3 - byte::_LANE] = data[4 * word + byte::_CHUNK]
        x.append(int.from_bytes(lanes, "little"))
    x0, x1, x2, x3, x4, x5, x6, x7 = x
    a, b, c, d = (v * ones for v in seed)
    # Round 1: F
    t = (a + (d ^ (b & (c ^ d))) + x0) & m
    a = ((t << 3) | (t >> 29)) & m
    t = (d + (c ^ (a & (b ^ c))) + x1) & m
    d = ((t << 7) | (t >> 25)) & m
    t = (c + (b ^ (d & (a ^ b))) + x2) & m
    c = ((t << 11) | (t >> 21)) & m
    t = (b + (a ^ (c & (d ^ a))) + x3) & m
    b = ((t << 19) | (t >> 13)) & m
    t = (a + (d ^ (b & (c ^ d))) + x4) & m
    a = ((t << 3) | (t >> 29)) & m
    t = (d + (c ^ (a & (b ^ c))) + x5) & m
    d = ((t << 7) | (t >> 25)) & m
    t = (c + (b ^ (d & (a ^ b))) + x6) & m
    c = ((t << 11) | (t >> 21)) & m
    t = (b + (a ^ (c & (d ^ a))) + x7) & m
    b = ((t << 19) | (t >> 13)) & m
    # Round 2: G
    t = (a + ((b & c) + ((b ^ c) & d)) + x1 + k2) & m
    a = ((t << 3) | (t >> 29)) & m
    t = (d + ((a & b) + ((a ^ b) & c)) + x3 + k2) & m
    d = ((t << 5) | (t >> 27)) & m
    t = (c + ((d & a) + ((d ^ a) & b)) + x5 + k2) & m
    c = ((t << 9) | (t >> 23)) & m
    t = (b + ((c & d) + ((c ^ d) & a)) + x7 + k2) & m
    b = ((t << 13) | (t >> 19)) & m
    t = (a + ((b & c) + ((b ^ c) & d)) + x0 + k2) & m
    a = ((t << 3) | (t >> 29)) & m
    t = (d + ((a & b) + ((a ^ b) & c)) + x2 + k2) & m
    d = ((t << 5) | (t >> 27)) & m
    t = (c + ((d & a) + ((d ^ a) & b)) + x4 + k2) & m
    c = ((t << 9) | (t >> 23)) & m
    t = (b + ((c & d) + ((c ^ d) & a)) + x6 + k2) & m
    b = ((t << 13) | (t >> 19)) & m
    # Round 3: H
    t = (a + (b ^ c ^ d) + x3 + k3) & m
    a = ((t << 3) | (t >> 29)) & m
    t = (d + (a ^ b ^ c) + x7 + k3) & m
    d = ((t << 9) | (t >> 23)) & m
    t = (c + (d ^ a ^ b) + x2 + k3) & m
    c = ((t << 11) | (t >> 21)) & m
    t = (b + (c ^ d ^ a) + x6 + k3) & m
    b = ((t << 15) | (t >> 17)) & m
    t = (a + (b ^ c ^ d) + x1 + k3) & m
    a = ((t << 3) | (t >> 29)) & m
    t = (d + (a ^ b ^ c) + x5 + k3) & m
    d = ((t << 9) | (t >> 23)) & m
    t = (c + (d ^ a ^ b) + x0 + k3) & m
    c = ((t << 11) | (t >> 21)) & m
    t = (b + (c ^ d ^ a) + x4 + k3) & m
    b = ((t << 15) | (t >> 17)) & m
    majors = struct.unpack(f"<{count}Q", ((seed[1] * ones + b) & m).to_bytes(_LANE * count,
                                                                             "little"))
    minors = struct.unpack(f"<{count}Q", ((seed[2] * ones + c) & m).to_bytes(_LANE * count,
                                                                             "little"))
    eof = (0x7FFFFFFF - 1) << 1
    return [(eof if major & ~1 == _EOF_HASH else major & ~1, minor)
            for major, minor in zip(majors, minors, strict=True)]
