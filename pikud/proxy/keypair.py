"""Whether nginx could serve a certificate with a key, checked in a short-lived child.

``pair_problem(crt, key)`` runs ``python -m pikud.proxy.keypair CRT KEY``, which
loads the pair as a TLS server would and prints why it cannot (exit status 1). The
daemon does not load ssl itself (launch.py): this check comes once per certificate
acme.sh installs, and ssl would stay in the long-lived daemon's memory afterwards.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pikud.errors import NginxError
from pikud.proxy.commands import run

CHECK_TIMEOUT = 30.0        # seconds for the child: an interpreter start and one load


async def pair_problem(crt: Path, key: Path) -> str | None:
    """Why nginx could not serve ``crt`` with ``key``, or None."""
    try:
        code, output = await run([sys.executable, "-m", "pikud.proxy.keypair", str(crt), str(key)],
                                 timeout=CHECK_TIMEOUT)
    except NginxError as exc:
        return f"the check could not run: {exc}"
    if code == 0:
        return None
    return output.strip() or f"the check failed with exit status {code}"


def main(argv: list[str]) -> int:
    import ssl

    crt, key = argv
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(crt, key)
    except (OSError, ssl.SSLError) as exc:
        print(exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
