"""Certificates for the nginx sites: a self-signed fallback so HTTPS works from the first push.

``ensure_certificate()`` makes ``nginx/APP.crt`` and ``nginx/APP.key`` when
they are missing: a P-256 EC key (milliseconds, where piku's synchronous
RSA-4096 cost up to 2 s of a first push), valid for every server name.
Once the site is live, acme.py replaces the pair with one from acme.sh when
acme.sh is installed; this one keeps serving if that fails.
"""

from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import Sequence
from pathlib import Path

from pikud import identity
from pikud.errors import NginxError
from pikud.paths import Paths
from pikud.proxy.commands import run

log = logging.getLogger(__name__)

VALID_DAYS = 3650


def subject_names(app: str, server_names: Sequence[str]) -> tuple[str, str]:
    """(common name, subjectAltName value) for ``server_names``; ``_`` is skipped.

    The names have passed ``site.server_names``, so they hold no character
    that openssl's -subj or -addext would read as syntax.
    """
    alt = []
    for name in server_names:
        if name == "_":
            continue
        try:
            alt.append(f"IP:{ipaddress.ip_address(name)}")
        except ValueError:
            alt.append(f"DNS:{name}")
    usable = [name for name in server_names if name != "_" and len(name) <= 64]
    return (usable[0] if usable else app), ",".join(alt)


async def ensure_certificate(paths: Paths, app: str, server_names: Sequence[str], *,
                             openssl: str = "openssl", timeout: float = 30.0) -> bool:
    """Make a self-signed certificate unless ``nginx/APP.crt`` and ``.key`` exist; True if made.

    The pair is made in a private temporary folder and moved into place key
    first, so a present certificate always has its key. The key is 0600:
    nginx's master process (root) reads it.
    """
    folder = paths.nginx()
    crt, key = folder / f"{app}.crt", folder / f"{app}.key"
    if crt.exists() and key.exists():
        return False
    folder.mkdir(parents=True, exist_ok=True)
    common_name, alt_names = subject_names(app, server_names)
    import tempfile  # imported on first use: the resting daemon stays light; see README
    with tempfile.TemporaryDirectory(dir=folder, prefix=f".{app}.tls.") as tmp:
        new_crt, new_key = Path(tmp) / "crt", Path(tmp) / "key"
        argv = [openssl, "req", "-x509", "-newkey", "ec",
                "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                "-days", str(VALID_DAYS), "-subj", f"/CN={common_name}",
                "-keyout", str(new_key), "-out", str(new_crt)]
        if alt_names:
            argv[-4:-4] = ["-addext", f"subjectAltName={alt_names}"]
        code, output = await run(argv, timeout=timeout)
        if code != 0:
            raise NginxError(f"openssl could not make a self-signed certificate for {app}:\n"
                             f"{output.strip()}")
        os.chmod(new_key, 0o600)
        os.chmod(new_crt, 0o644)
        owner = identity.current().deploy_owner()      # app users: acme.sh replaces them
        if owner is not None:
            os.chown(new_key, *owner)
            os.chown(new_crt, *owner)
        os.replace(new_key, key)
        os.replace(new_crt, crt)
    log.info("certificate: self-signed for %s (%s)", app, alt_names or common_name)
    return True
