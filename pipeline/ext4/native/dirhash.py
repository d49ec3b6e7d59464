"""The htree name hash: half MD4 with the filesystem's seed (e2fsprogs lib/ext2fs/dirhash.c).

Names are read 32 bytes at a time into eight 32-bit words; each byte enters
as a signed or an unsigned char, as the superblock's
``signed_directory_hash``/``unsigned_directory_hash`` flag says (mke2fs on
x86 sets signed, and so do we, on every host). The major hash has its low
bit cleared (the kernel uses it to mark a hash continued in the next leaf).

Trusts nothing: pure arithmetic on the name bytes and the seed.
"""

from __future__ import annotations

import struct

__all__ = ["half_md4", "seed_words"]

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
    out: list[int] = []
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


def _rotl(x: int, s: int) -> int:
    return ((x << s) | (x >> (32 - s))) & _MASK


def _transform(buf: list[int], x: list[int]) -> None:
    a, b, c, d = buf
    # Round 1: F(x, y, z) = z ^ (x & (y ^ z))
    for i, s in ((0, 3), (1, 7), (2, 11), (3, 19), (4, 3), (5, 7), (6, 11), (7, 19)):
        a = _rotl((a + (d ^ (b & (c ^ d))) + x[i]) & _MASK, s)
        a, b, c, d = d, a, b, c
    # Round 2: G(x, y, z) = (x & y) + ((x ^ y) & z)
    for i, s in ((1, 3), (3, 5), (5, 9), (7, 13), (0, 3), (2, 5), (4, 9), (6, 13)):
        a = _rotl((a + ((b & c) + ((b ^ c) & d)) + x[i] + _K2) & _MASK, s)
        a, b, c, d = d, a, b, c
    # Round 3: H(x, y, z) = x ^ y ^ z
    for i, s in ((3, 3), (7, 9), (2, 11), (6, 15), (1, 3), (5, 9), (0, 11), (4, 15)):
        a = _rotl((a + (b ^ c ^ d) + x[i] + _K3) & _MASK, s)
        a, b, c, d = d, a, b, c
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
