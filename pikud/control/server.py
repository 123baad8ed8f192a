"""The control API behind ``$PIKU_ROOT/pikud.sock`` (routes: control/protocol.py).

Handlers (control/handlers.py) parse the request, call the app and return plain data; one
middleware checks the peer's uid (SO_PEERCRED: the daemon's own uid and root
only), wraps results in the envelope and turns every ``PikudError`` into its
named code. The socket is bound under umask 077, so it is born 0600.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from pikud import __version__
from pikud.control.handlers import Routes
from pikud.control.protocol import MAX_BODY, error, ok
from pikud.errors import Forbidden, PikudError
from pikud.refresh import CloudflareRefresh
from pikud.registry import AppRegistry

log = logging.getLogger(__name__)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REGISTRY = web.AppKey("registry", AppRegistry)


def peer_uid(request: web.Request) -> int:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        raise Forbidden("cannot identify the peer")
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


@web.middleware
async def settled(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Requests that act on apps wait for boot to stop a killed pikud's processes (bounded)."""
    if request.method != "GET" and request.path.startswith("/apps/"):
        await request.app[REGISTRY].settle()
    return await handler(request)


@web.middleware
async def envelope(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        uid = peer_uid(request)
        if uid not in (0, os.getuid()):
            raise Forbidden(f"uid {uid} may not use this socket")
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
             cloudflare: CloudflareRefresh) -> web.Application:
    app = web.Application(middlewares=[envelope, settled], client_max_size=MAX_BODY)
    app[REGISTRY] = registry
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
    """A listening unix socket at ``path``, mode 0600, replacing a stale one."""
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
    old = os.umask(0o077)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    sock.listen(128)
    return sock


class ControlServer:
    def __init__(self, registry: AppRegistry, status: Callable[[], dict[str, Any]],
                 path: Path, cloudflare: CloudflareRefresh, idle_timeout: float) -> None:
        """``idle_timeout``: a connection without a complete request for that long is closed.

        aiohttp's keep-alive timer (since 3.14.5) runs from the accept and after
        each answer, and closes a connection still waiting for (the rest of) a
        request head.
        """
        self.path = path
        self.runner = web.AppRunner(make_app(registry, status, cloudflare), handle_signals=False,
                                    access_log=None, handler_cancellation=True,
                                    shutdown_timeout=2.0, keepalive_timeout=idle_timeout)

    async def start(self, inherited: socket.socket | None = None) -> bool:
        """Serve on a socket bound now, or on ``inherited`` (the listener a previous pikud
        left in systemd's store) when it is bound to our path. True when it was used
        (else it is closed): requests made while no pikud ran are answered now."""
        await self.runner.setup()
        reused = inherited is not None and inherited.getsockname() == str(self.path)
        if inherited is not None and not reused:
            inherited.close()
        self._sock = inherited if reused and inherited is not None else bind_socket(self.path)
        await web.SockSite(self.runner, self._sock).start()
        return reused

    @property
    def listener(self) -> int:
        """The listening socket's descriptor (for systemd's store)."""
        return self._sock.fileno()

    async def stop(self) -> None:
        await self.runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def daemon_status(started: float, loop_name: str, registry: AppRegistry) -> dict[str, Any]:
    return {"version": __version__, "pid": os.getpid(), "uptime": time.monotonic() - started,
            "loop": loop_name, "root": str(registry.paths.root),
            "apps": len(registry.names()), "processes": registry.process_count()}
