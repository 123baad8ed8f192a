"""SHA-256, for pikud's short names and fingerprints (app users, nginx upstreams, specs,
ssh keys, certificates) and the keys of built environments.

The digests are of a few hundred bytes, so CPython's own SHA-256 (the one hashlib falls
back to without OpenSSL; `random` takes its SHA-512 the same way) does them: importing
hashlib sets up OpenSSL's digests, about 600 KiB of the daemon's RSS. hashlib is the
fallback for an interpreter built without its own.
"""

from __future__ import annotations

from typing import Protocol

try:
    from _sha2 import sha256 as _sha256  # CPython 3.12 and later
except ImportError:
    try:
        from _sha256 import sha256 as _sha256  # CPython 3.11
    except ImportError:
        from hashlib import sha256 as _sha256


def sha256(data: bytes) -> bytes:
    """The SHA-256 digest of ``data``."""
    return _sha256(data).digest()


class Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...
    def hexdigest(self) -> str: ...


def sha256_hasher() -> Hasher:
    """A SHA-256 fed piece by piece (``update``), for contents too large to join first."""
    hasher: Hasher = _sha256()
    return hasher
