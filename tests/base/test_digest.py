"""pipeline.base.digest: digests are validated before any use, and verified while reading."""

from __future__ import annotations

import hashlib

import pytest

from pipeline.base.digest import Digest, VerifyingHasher, digest_of, parse_digest
from pipeline.errors import BadDigest, DigestMismatch

HEX = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(("text", "reason"), [
    ("", "expected 'algorithm:hex'"),
    (HEX, "expected 'algorithm:hex'"),
    ("md5:" + "0" * 32, "unsupported algorithm 'md5'"),
    ("sha256:" + HEX.upper(), "expected 64 lowercase hex characters"),
    ("sha256:" + HEX[:-1], "expected 64 lowercase hex characters"),
    ("sha256:" + HEX + "0", "expected 64 lowercase hex characters"),
    ("sha256:../../etc/passwd", "expected 64 lowercase hex characters"),
    ("sha256:" + HEX[:-2] + "/x", "expected 64 lowercase hex characters"),
    ("sha512:" + HEX, "expected 128 lowercase hex characters"),
], ids=["empty", "bare-hex", "md5", "uppercase", "short", "long", "path", "slash", "sha512-short"])
def test_bad_digests_are_refused(text: str, reason: str) -> None:
    with pytest.raises(BadDigest) as err:
        parse_digest(text)
    assert reason in str(err.value) and repr(text) in str(err.value)


def test_good_digests() -> None:
    d = parse_digest("sha256:" + HEX)
    assert (d.algorithm, d.hex, str(d), d.short) == ("sha256", HEX, "sha256:" + HEX, HEX[:12])
    long = parse_digest("sha512:" + hashlib.sha512(b"x").hexdigest())
    assert long.hasher().name == "sha512"
    assert digest_of(b"x") == d


def test_verifying_hasher_checks_size_and_digest() -> None:
    good = VerifyingHasher(digest_of(b"hello"), size=5, what="blob")
    good.update(b"hel")
    good.update(b"lo")
    good.verify()

    short = VerifyingHasher(digest_of(b"hello"), size=5, what="blob")
    short.update(b"hell")
    with pytest.raises(DigestMismatch, match="blob size: expected 5 bytes, got 4 bytes"):
        short.verify()

    with pytest.raises(DigestMismatch, match="blob size: expected 5 bytes, got more than 5"):
        VerifyingHasher(digest_of(b"hello"), size=5, what="blob").update(b"hello!")

    wrong = VerifyingHasher(digest_of(b"hello"), size=5, what="blob")
    wrong.update(b"jello")
    with pytest.raises(DigestMismatch) as err:
        wrong.verify()
    assert str(err.value) == f"blob: expected {digest_of(b'hello')}, got {digest_of(b'jello')}"


def test_digest_is_a_value() -> None:
    assert Digest("sha256", HEX) == parse_digest("sha256:" + HEX)
    assert len({Digest("sha256", HEX), parse_digest("sha256:" + HEX)}) == 1
