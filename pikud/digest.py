"""SHA-256, for pikud's short names and fingerprints (app users, nginx upstreams, specs,
ssh keys, certificates).

hashlib is imported at the first digest, not at pikud's start: it loads OpenSSL's digests
(about 600 KiB of the daemon's RSS), which a resting daemon with no apps never uses.
"""

from __future__ import annotations


def sha256(data: bytes) -> bytes:
    """The SHA-256 digest of ``data``."""
    import hashlib  # imported on first use: the resting daemon stays light; see README
    return hashlib.sha256(data).digest()
