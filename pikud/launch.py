"""`pikud`'s entry point: the command line, the front and the event loop, then the daemon.

The loop is chosen before anything imports asyncio. On stock asyncio the daemon holds
ssl off for its whole life: asyncio imports ssl only if it can, and the daemon itself
does no TLS (nginx terminates it; a certificate check and Cloudflare's lists run in
short-lived children), so ssl with libssl and libcrypto would be 4.4 MiB of its RSS for
nothing. uvloop cannot import without ssl, so it keeps it.
"""

# Design notes:
# - `--loop auto` (the default): uvloop when the built-in router carries the apps'
#   HTTP traffic, where its faster sockets pay; stock asyncio behind nginx, where the
#   daemon only supervises, which both loops do as fast (bench/run) and asyncio does
#   in 5-6 MiB less (README "Decisions").
# - ssl is blocked with None in sys.modules, which makes `import ssl` raise: a part of
#   the daemon that wanted TLS fails loudly in the tests instead of quietly bringing
#   the 4.4 MiB back.

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pikud import __version__, daemonargs
from pikud.errors import PikudError
from pikud.programs import which

NGINX_SNIPPET = Path("/etc/nginx/conf.d/pikud.conf")     # contrib/nginx-pikud.conf, installed


def proxy_mode(environ: Mapping[str, str]) -> str:
    """PIKU_PROXY: builtin (pikud routes HTTP itself) or nginx.

    By default nginx is used when it is installed and set up for pikud (its
    snippet in conf.d), else the built-in router.
    """
    mode = environ.get("PIKU_PROXY", "auto")
    if mode not in ("auto", "builtin", "nginx"):
        raise PikudError(f"PIKU_PROXY must be builtin, nginx or auto, got {mode!r}")
    if mode == "auto":
        return "nginx" if which("nginx") and NGINX_SNIPPET.exists() else "builtin"
    return mode


def event_loop(chosen: str, proxy: str) -> str:
    """The loop `--loop` names; for auto, uvloop with the built-in router, else asyncio."""
    if chosen != "auto":
        return chosen
    return "uvloop" if proxy == "builtin" else "asyncio"


def hold_off_ssl(loop: str) -> None:
    """On stock asyncio, make every later `import ssl` of this process fail (design notes).
    A re-exec's preflight imports the new code under the same hold: running images call
    this by name (reexec.PREFLIGHT), so it keeps its name and argument."""
    if loop == "asyncio":
        sys.modules["ssl"] = None       # type: ignore[assignment]


def main(argv: list[str] | None = None) -> int:
    try:
        args = daemonargs.parse(sys.argv[1:] if argv is None else argv, __version__)
    except daemonargs.UsageError as exc:
        print(f"{daemonargs.USAGE}\npikud: error: {exc}", file=sys.stderr)
        return 2
    if isinstance(args, daemonargs.Exit):
        print(args.text, end="")
        return 0
    try:
        proxy = proxy_mode(os.environ)
    except PikudError as exc:
        print(f"pikud: {exc}", file=sys.stderr)
        return 1
    loop = event_loop(args.loop, proxy)
    hold_off_ssl(loop)
    from pikud.daemon import serve
    return serve(args, loop, proxy)
