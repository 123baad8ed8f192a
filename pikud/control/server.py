"""The control API behind ``$PIKU_ROOT/pikud.sock`` (routes: control/protocol.py).

Handlers (control/handlers.py, control/access_routes.py) parse the request, call the app
and return plain data. The outer middleware wraps results in the envelope and turns
every ``PikudError`` into its named code; the guard (control/guard.py) checks the peer
(SO_PEERCRED: the daemon's own uid and root only, and no process pikud started) and the
caller's role, and writes the audit log. The socket is bound under umask 177, so it is
born 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from pikud import __version__, identity
from pikud.control import access_routes
from pikud.control.guard import ACCESS, Access, guard
from pikud.control.handlers import Routes
from pikud.control.protocol import MAX_BODY, error, ok
from pikud.errors import PikudError
from pikud.refresh import CloudflareRefresh
from pikud.registry import AppRegistry

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REGISTRY = web.AppKey("registry", AppRegistry)
DRAIN_TIMEOUT = 2.0         # seconds a request may still take once the server stops


@web.middleware
async def settled(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests that act on apps wait for boot to stop a killed pikud's processes (bounded)."""
    if request.method != "GET" and request.path.startswith("/apps/"):
        await request.app[REGISTRY].settle()
    return await handler(request)


@web.middleware
async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        result = await handler(request)
    except PikudError as exc:
        return web.json_response(error(exc.code, str(exc)), status=exc.status)
    except web.HTTPRequestEntityTooLarge:
        return web.json_response(
            error("body_too_large", f"request body is larger than {MAX_BODY} bytes"), status=413)
    except web.HTTPException as exc:
        code = "not_found" if exc.status == 404 else "bad_request"
        return web.json_response(error(code, exc.reason), status=exc.status)
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response(error("internal_error", f"pikud failed: "
                                       f"{exc.__class__.__name__}: {exc}"), status=500)
    if isinstance(result, web.StreamResponse):
        return result
    return web.json_response(ok(result))


def make_app(registry: AppRegistry, status: Callable[[], dict[str, Any]],
             cloudflare: CloudflareRefresh, access: Access) -> web.Application:
    app = web.Application(middlewares=[envelope, guard, settled], client_max_size=MAX_BODY)
    app[REGISTRY] = registry
    app[ACCESS] = access
    app.add_routes(access_routes.ROUTES)
    r = Routes(registry, status, cloudflare)
    app.add_routes([
        web.get("/status", r.status),
        web.get("/apps", r.list_apps),
        web.get("/apps/{app}", r.show),
        web.delete("/apps/{app}", r.destroy),
        web.post("/apps/{app}/start", r.start),
        web.post("/apps/{app}/stop", r.stop),
        web.post("/apps/{app}/restart", r.restart),
        web.post("/apps/{app}/deploy", r.deploy),
        web.post("/apps/{app}/scale", r.scale),
        web.get("/apps/{app}/releases", r.releases),
        web.get("/apps/{app}/cron", r.cron),
        web.post("/apps/{app}/cron/{kind}/run", r.cron_run),
        web.post("/apps/{app}/rollback", r.rollback),
        web.get("/apps/{app}/config", r.config),
        web.post("/apps/{app}/config", r.configure),
        web.get("/apps/{app}/config/live", r.live),
        web.get("/apps/{app}/logs", r.logs),
        web.get("/events", r.events),
        web.post("/cloudflare/refresh", r.cloudflare_refresh),
    ])
    return app


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
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    owner = identity.current().deploy_owner()
    if owner is not None:               # pikud runs as root: the console and ssh are its user
        os.chown(path, *owner, follow_symlinks=False)   # its folder: a link there stays one
    sock.listen(128)
    return sock


class ControlServer:
    def __init__(self, registry: AppRegistry, status: Callable[[], dict[str, Any]],
                 path: Path, cloudflare: CloudflareRefresh, idle_timeout: float,
                 access: Access) -> None:
        """``idle_timeout``: a connection without a complete request for that long is closed.

        aiohttp's keep-alive timer (since 3.14.5) runs from the accept and after
        each answer, and closes a connection still waiting for (the rest of) a
        request head.
        """
        self.path = path
        app = make_app(registry, status, cloudflare, access)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None,
                                    handler_cancellation=True, shutdown_timeout=DRAIN_TIMEOUT,
                                    keepalive_timeout=idle_timeout)
        self._sock: socket.socket | None = None     # the listener: kept while not accepting
        self._server: asyncio.AbstractServer | None = None

    async def start(self, inherited: socket.socket | None = None) -> None:
        """Bind the socket (or take the listener ``inherited`` from the previous image)."""
        await self.runner.setup()
        self._sock = inherited if inherited is not None else bind_socket(self.path)
        await self.accept()

    async def accept(self) -> None:
        """Accept connections (again): on a duplicate, so that closing the server to stop
        accepting leaves the listener, and the connections waiting in it, alone."""
        assert self._sock is not None and self.runner.server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.runner.server, sock=self._sock.dup(), backlog=128)

    def fileno(self) -> int:
        assert self._sock is not None
        return self._sock.fileno()

    async def drain(self) -> None:
        """Stop accepting (new requests wait in the backlog) and end the connections once
        their request is answered; a stream that goes on (logs -f, events follow) is cut
        after DRAIN_TIMEOUT."""
        self.pause()
        assert self.runner.server is not None
        await self.runner.server.shutdown(DRAIN_TIMEOUT)

    def pause(self) -> None:
        """Stop accepting; the requests being answered go on."""
        if self._server is not None:
            self._server.close()
            self._server = None

    async def stop(self) -> None:
        self.pause()
        await self.runner.cleanup()
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
    errors = [event for event in registry.events.recent if event["event"] in ERROR_EVENTS]
    return {"version": __version__, "pid": os.getpid(), "uptime": now - started,
            "image_uptime": now - (started if image_started is None else image_started),
            "started": how, "loop": loop_name, "root": str(registry.paths.root),
            "apps": len(registry.names()), "processes": registry.process_count(),
            "apps_by_state": apps, "processes_by_state": processes,
            "errors": errors[-ERRORS_SHOWN:]}
