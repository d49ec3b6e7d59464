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
