"""Which app the router sends a request to, decided from its Host and path alone. Pure.

A request goes to one app:

* by ``Host``: the app's server names, ``APP`` and ``APP.localhost``
  (case-insensitive, port ignored); or, when the Host names no app,
* by the path prefix ``/_/APP/``, stripped before proxying (``/_/APP``
  redirects to ``/_/APP/``).

Apart from ``router.py`` so the decisions are tested with tables, without a
server: this module reads no socket and no file. The re-exec bridge
(``pikud/bridge.py``) routes with it too, without aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
PREFIX = "/_/"


@dataclass(frozen=True)
class Route:
    """Where one app's requests go: its server names, live upstreams and static folders."""

    app: str
    hosts: tuple[str, ...]
    upstreams: tuple[str, ...]
    static: tuple[tuple[str, Path], ...] = ()     # (url prefix, folder)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or ``:PORT`` (host 127.0.0.1) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    usage = "write HOST:PORT, [::1]:PORT or :PORT"
    if not sep:
        raise ValueError(f"HTTP address {text!r} has no port; {usage}")
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"HTTP address {text!r}: put an IPv6 address in brackets, like [::1]:8080")
    elif any(c in "[]/@" or c.isspace() for c in host):
        raise ValueError(f"HTTP address {text!r}: {host!r} is not a host name; {usage}")
    if not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"HTTP address {text!r}: the port must be a number from 0 to 65535")
    return host or DEFAULT_HOST, int(port)


def host_name(header: str) -> str:
    """The name in a Host header: lower case, without port, brackets or trailing dot."""
    host = header.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.partition(":")[0].rstrip(".")


def host_table(routes: Iterable[Route]) -> tuple[dict[str, str], list[str]]:
    """Host name -> app, and the names claimed twice (the first claim wins, as in nginx).

    Server names from the apps' settings come before the implicit ``APP`` and
    ``APP.localhost``, and apps are taken in name order, so the result does not
    depend on the order of ``set_route`` calls.
    """
    routes = sorted(routes, key=lambda r: r.app)
    claims = [(h, r.app) for r in routes for h in r.hosts]
    claims += [(h, r.app) for r in routes for h in (r.app, f"{r.app}.localhost")]
    table: dict[str, str] = {}
    conflicts = []
    for host, app in claims:
        name = host_name(host)
        if table.setdefault(name, app) != app:
            conflicts.append(f"{name} (of {app}, kept for {table[name]})")
    return table, conflicts


@dataclass(frozen=True)
class Target:
    """A request routed to ``app``: the upstream path (with query) and the stripped prefix."""

    app: str
    path: str
    prefix: str = ""


@dataclass(frozen=True)
class Redirect:
    location: str


def resolve(hosts: Mapping[str, str], apps: Iterable[str], host: str, raw_path: str
            ) -> Target | Redirect | None:
    """Route by Host first, then by the ``/_/APP/`` prefix; None for no app."""
    app = hosts.get(host_name(host))
    if app is not None:
        return Target(app, raw_path)
    path, q, query = raw_path.partition("?")
    if not path.startswith(PREFIX):
        return None
    name, slash, rest = path[len(PREFIX):].partition("/")
    if name not in apps:
        return None
    if not slash:
        return Redirect(f"{PREFIX}{name}/{q}{query}")
    return Target(name, f"/{rest}{q}{query}", prefix=f"{PREFIX}{name}")


def match_static(static: Iterable[tuple[str, Path]], path: str) -> tuple[Path, str] | None:
    """The folder of the longest static prefix of ``path`` (decoded) and the rest of it."""
    best: tuple[Path, str] | None = None
    best_len = -1
    for url, folder in static:
        url = url.rstrip("/")
        if (path == url or path.startswith(url + "/")) and len(url) > best_len:
            best, best_len = (folder, path[len(url):]), len(url)
    return best


def upstream_url(upstream: str) -> tuple[str, str | None]:
    """``127.0.0.1:PORT`` or ``unix:/abs/path.sock`` -> (base URL, unix socket path or None)."""
    if upstream.startswith("unix:"):
        path = upstream[len("unix:"):]
        if not path.startswith("/"):
            raise ValueError(f"upstream {upstream!r}: the socket path must be absolute")
        return "http://localhost", path
    host, port = parse_address(upstream)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}", None



def forwarded(peer: str, scheme: str, host: str, port: int, prefix: str
              ) -> list[tuple[str, str]]:
    """The headers a routed request gets upstream, as piku's nginx site sets them:
    X-Forwarded-*, X-Request-Start, and X-Forwarded-Prefix when routed by prefix.
    Whatever the client sent under these names must not reach the app."""
    headers = [("X-Forwarded-For", peer), ("X-Forwarded-Proto", scheme),
               ("X-Forwarded-Host", host_name(host)), ("X-Forwarded-Port", str(port)),
               ("X-Request-Start", f"{time.time():.3f}")]
    return headers + ([("X-Forwarded-Prefix", prefix)] if prefix else [])


def prefixed_location(location: str, prefix: str) -> str:
    """An absolute-path Location of an app routed by ``prefix``, with the prefix given back."""
    if (prefix and location.startswith("/") and not location.startswith("//")
            and not location.startswith(prefix + "/")):
        return prefix + location
    return location
