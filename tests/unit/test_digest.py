"""pikud's SHA-256 (CPython's own, not OpenSSL's) gives the standard digests: app user
names, upstream names and spec digests derived from it stay what they were."""

from __future__ import annotations

import hashlib

from pikud.digest import sha256


def test_it_is_sha256() -> None:
    assert sha256(b"abc").hex() == \
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    for data in (b"", b"x" * 55, b"y" * 64, bytes(range(256)) * 40):
        assert sha256(data) == hashlib.sha256(data).digest()
