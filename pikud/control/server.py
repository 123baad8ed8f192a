"""The control API behind ``$PIKU_ROOT/pikud.sock`` (routes: control/protocol.py).

Handlers (control/handlers.py, control/access_routes.py) parse the request, call the app
and return plain data (control/request.py); the HTTP is control/http.py's. The outer
layer (``envelope``) wraps results in the envelope and turns
every ``PikudError`` into its named code; the guard (control/guard.py) checks the peer
(SO_PEERCRED: the daemon's own uid and root only, and no process pikud started) and the
caller's role, and writes the audit log. The socket is made 0600 between its bind and
its listen (on the file itself, not through the umask: that is the whole process's).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pikud import __version__, identity
from pikud.control import access_routes
from pikud.control.guard import ACCESS, Access, guard
from pikud.control.handlers import Routes
from pikud.control.http import HttpServer
from pikud.control.protocol import error, ok
from pikud.control.request import Handler, Key, Reply, Request, Route, RouteTable, Stream, Values
from pikud.errors import PikudError
from pikud.fds import duplicate
from pikud.procman.sockets import chmod_socket
from pikud.refresh import CloudflareRefresh
from pikud.registry import AppRegistry

log = logging.getLogger(__name__)
REGISTRY: Key[AppRegistry] = Key("registry")
DRAIN_TIMEOUT = 2.0         # seconds a request may still take once the server stops


async def settled(request: Request, handler: Handler) -> Any:
    """Requests that act on apps wait for boot to stop a killed pikud's processes (bounded)."""
    if request.method != "GET" and request.path.startswith("/apps/"):
        await request.app[REGISTRY].settle()
    return await handler(request)


async def envelope(request: Request, handler: Handler) -> Reply | Stream:
    try:
        result = await handler(request)
    except PikudError as exc:
        return Reply(exc.status, error(exc.code, str(exc)))
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return Reply(500, error("internal_error", f"pikud failed: "
                                f"{exc.__class__.__name__}: {exc}"))
    if isinstance(result, Stream):
        return result
    return Reply(200, ok(result))


def route_table(registry: AppRegistry, status: Callable[[], dict[str, Any]],
                cloudflare: CloudflareRefresh) -> RouteTable:
    r = Routes(registry, status, cloudflare)
    return RouteTable([
        *access_routes.ROUTES,
        Route("GET", "/status", r.status),
        Route("GET", "/apps", r.list_apps),
        Route("GET", "/apps/{app}", r.show),
        Route("DELETE", "/apps/{app}", r.destroy),
        Route("POST", "/apps/{app}/start", r.start),
        Route("POST", "/apps/{app}/stop", r.stop),
        Route("POST", "/apps/{app}/restart", r.restart),
        Route("POST", "/apps/{app}/deploy", r.deploy),
        Route("POST", "/apps/{app}/scale", r.scale),
        Route("GET", "/apps/{app}/releases", r.releases),
        Route("GET", "/apps/{app}/cron", r.cron),
        Route("POST", "/apps/{app}/cron/{kind}/run", r.cron_run),
        Route("POST", "/apps/{app}/rollback", r.rollback),
        Route("GET", "/apps/{app}/config", r.config),
        Route("POST", "/apps/{app}/config", r.configure),
        Route("GET", "/apps/{app}/config/live", r.live),
        Route("GET", "/apps/{app}/logs", r.logs),
        Route("GET", "/events", r.events),
        Route("POST", "/cloudflare/refresh", r.cloudflare_refresh),
    ])


async def respond(request: Request) -> Reply | Stream:
    """The route's handler inside its layers: envelope(guard(settled(handler)))."""
    inner = partial(settled, handler=request.handler)
    return await envelope(request, partial(guard, handler=inner))


def bind_socket(path: Path) -> socket.socket:
    """A listening unix socket at ``path``, mode 0600 (the deploy user's when pikud runs
    as root), replacing a stale one."""
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise PikudError(f"another pikud is already serving {path}")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        chmod_socket(str(path), 0o600)      # before listen(): nobody connects meanwhile
    except OSError:
        sock.close()
        raise
    owner = identity.current().deploy_owner()
    if owner is not None:               # pikud runs as root: the console and ssh are its user
        os.chown(path, *owner, follow_symlinks=False)   # its folder: a link there stays one
    sock.listen(128)
    return sock


class ControlServer:
    def __init__(self, registry: AppRegistry, status: Callable[[], dict[str, Any]],
                 path: Path, cloudflare: CloudflareRefresh, idle_timeout: float,
                 access: Access) -> None:
        """``idle_timeout``: a connection without a complete request for that long is closed
        (from the accept, and after each answer)."""
        self.path = path
        shared = Values()
        shared[REGISTRY] = registry
        shared[ACCESS] = access
        self.http = HttpServer(route_table(registry, status, cloudflare), shared, respond,
                               idle_timeout)
        self._sock: socket.socket | None = None     # the listener: kept while not accepting

    async def start(self, inherited: socket.socket | None = None) -> None:
        """Bind the socket (or take the listener ``inherited`` from the previous image)."""
        self._sock = inherited if inherited is not None else bind_socket(self.path)
        await self.accept()

    async def accept(self) -> None:
        """Accept connections (again): on a duplicate, so that closing the server to stop
        accepting leaves the listener, and the connections waiting in it, alone."""
        assert self._sock is not None
        await self.http.accept(duplicate(self._sock))

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    async def drain(self) -> None:
        """Stop accepting (new requests wait in the backlog) and end the connections once
        their request is answered; a stream that goes on (logs -f, events follow) is cut
        after DRAIN_TIMEOUT."""
        await self.http.drain(DRAIN_TIMEOUT)

    def pause(self) -> None:
        """Stop accepting; the requests being answered go on."""
        self.http.pause()

    async def stop(self) -> None:
        await self.drain()
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


ERROR_EVENTS = frozenset({"error", "FATAL", "killed", "reexec_refused"})
ERRORS_SHOWN = 10       # the last errors ``GET /status`` shows


def daemon_status(started: float, loop_name: str, registry: AppRegistry, *,
                  how: str = "boot", image_started: float | None = None) -> dict[str, Any]:
    """pikud itself: version, pid, uptime (since its first boot; a re-exec keeps it) and
    that of the running image, how it started, apps and processes by state, and the
    last errors among the recent events."""
    now = time.monotonic()
    apps: dict[str, int] = {}
    for name in registry.names():
        app = registry.apps.get(name)
        state = app.desired.value if app is not None else "stopped"
        apps[state] = apps.get(state, 0) + 1
    processes: dict[str, int] = {}
    for app in registry.apps.values():
        for proc in app.group.all():
            processes[proc.state.value] = processes.get(proc.state.value, 0) + 1
    errors = registry.events.last(ERRORS_SHOWN, kinds=ERROR_EVENTS)
    return {"version": __version__, "pid": os.getpid(), "uptime": now - started,
            "image_uptime": now - (started if image_started is None else image_started),
            "started": how, "loop": loop_name, "root": str(registry.paths.root),
            "apps": len(registry.names()), "processes": registry.process_count(),
            "apps_by_state": apps, "processes_by_state": processes,
            "errors": errors}
