"""The control API behind ``$PIKU_ROOT/pikud.sock`` (routes: control/protocol.py).

Handlers parse the request, call ``apps`` and return plain data; one
middleware checks the peer's uid (SO_PEERCRED: the daemon's own uid and root
only), wraps results in the envelope and turns every ``PikudError`` into its
named code. The socket is bound under umask 077, so it is born 0600.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from pikud import __version__
from pikud.control.protocol import MAX_BODY, NDJSON, error, ndjson_line, ok
from pikud.convert import whole_number
from pikud.deploy.checkout import validate_ref, validate_revision
from pikud.deploy.pipeline import PushInfo
from pikud.errors import BadRequest, Forbidden, PikudError
from pikud.refresh import CloudflareRefresh
from pikud.registry import AppRegistry

log = logging.getLogger(__name__)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Progress = Callable[[str], None]
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


async def body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed JSON body: {exc}") from exc
    except RecursionError:
        raise BadRequest("malformed JSON body: nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object")
    return data


def int_query(request: web.Request, key: str, default: int, maximum: int = 100_000) -> int:
    raw = request.query.get(key, str(default))
    number = whole_number(raw, maximum)     # not int(): "²" is a digit, 4,301 digits too many
    if number is None:
        raise BadRequest(f"{key} must be an integer from 0 to {maximum}, got {raw!r}")
    return number


def flag(request: web.Request, key: str) -> bool:
    return request.query.get(key, "0").lower() in ("1", "true", "yes")


class Routes:
    """One method per route; each returns data or a stream."""

    def __init__(self, registry: AppRegistry, status: Callable[[], dict[str, Any]],
                 cloudflare: CloudflareRefresh) -> None:
        self.registry = registry
        self.status_of_daemon = status
        self.cloudflare = cloudflare

    def app(self, request: web.Request):  # type: ignore[no-untyped-def]
        return self.registry.get(request.match_info["app"])

    async def status(self, request: web.Request) -> Any:
        """GET /status -> version, pid, uptime, loop, root, apps, processes."""
        return self.status_of_daemon()

    async def list_apps(self, request: web.Request) -> Any:
        """GET /apps -> {"apps": [summary, ...], "problems": [daemon-wide problem, ...]}"""
        return {"apps": [self.registry.get(name).summary() for name in self.registry.names()],
                "problems": self.registry.problems()}

    async def show(self, request: web.Request) -> Any:
        """GET /apps/APP -> detail with live processes."""
        return self.app(request).detail()

    async def start(self, request: web.Request) -> Any:
        app = self.app(request)
        await finish(app.start())
        return app.detail()

    async def stop(self, request: web.Request) -> Any:
        app = self.app(request)
        await finish(app.stop())
        return app.detail()

    async def restart(self, request: web.Request) -> Any:
        app = self.app(request)
        await finish(app.restart())
        return app.detail()

    async def deploy(self, request: web.Request) -> Any:
        """POST /apps/APP/deploy[?progress=1] {"revision", "ref", "old", "pusher",
        "fingerprint", "git_env"} (all optional: without a revision the current release
        is rebuilt)."""
        data = await body(request)
        push = push_info(data) if data else None
        app = self.registry.get(request.match_info["app"], pushed=push is not None)

        async def action(progress: Progress) -> Any:
            await app.deploy(push, progress)
            return app.detail()
        return await run_action(request, action)

    async def cron(self, request: web.Request) -> Any:
        """GET /apps/APP/cron -> {"jobs": [job, ...]}"""
        return {"jobs": self.app(request).cron()}

    async def cron_run(self, request: web.Request) -> Any:
        """POST /apps/APP/cron/KIND/run -> {"kind", "started", "queued"}"""
        return await finish(self.app(request).cron_run(request.match_info["kind"]))

    async def releases(self, request: web.Request) -> Any:
        """GET /apps/APP/releases -> {"releases": [newest first]}"""
        return {"releases": self.app(request).releases_list()}

    async def rollback(self, request: web.Request) -> Any:
        """POST /apps/APP/rollback[?progress=1] {"release": N} (default: the previous one)"""
        app = self.app(request)
        number = (await body(request)).get("release")
        if number is not None and (not isinstance(number, int) or isinstance(number, bool)
                                   or number < 1):
            raise BadRequest(f'"release" must be a release number, got {number!r}')

        async def action(progress: Progress) -> Any:
            await app.rollback(number, progress)
            return app.detail()
        return await run_action(request, action)

    async def scale(self, request: web.Request) -> Any:
        """POST /apps/APP/scale {"scaling": {"KIND": N}}"""
        app = self.app(request)
        scaling = (await body(request)).get("scaling")
        if not isinstance(scaling, dict) or not scaling:
            raise BadRequest('expected {"scaling": {"KIND": N, ...}}')
        await finish(app.scale(scaling))
        return app.detail()

    async def config(self, request: web.Request) -> Any:
        """GET /apps/APP/config -> {"config": {K: V}}"""
        return {"config": self.app(request).config()}

    async def configure(self, request: web.Request) -> Any:
        """POST /apps/APP/config {"set": {K: V}, "unset": [K]} -> {"config": {...}}"""
        app = self.app(request)
        data = await body(request)
        updates, removals = data.get("set", {}), data.get("unset", [])
        if not isinstance(updates, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in updates.items()):
            raise BadRequest('"set" must be an object of string values')
        if not isinstance(removals, list) or not all(isinstance(k, str) for k in removals):
            raise BadRequest('"unset" must be a list of strings')
        if not updates and not removals:
            raise BadRequest('nothing to change: give "set" or "unset"')
        return {"config": await finish(app.configure(updates, removals))}

    async def live(self, request: web.Request) -> Any:
        """GET /apps/APP/config/live -> {"env": {...}, "cwd": path}"""
        return self.app(request).live()

    async def logs(self, request: web.Request) -> Any:
        """GET /apps/APP/logs?lines=N&kind=K[&follow=1]"""
        app = self.app(request)
        kind = request.query.get("kind") or None
        lines = app.logs(int_query(request, "lines", 20), kind)
        if not flag(request, "follow"):
            return {"lines": lines}
        queue: asyncio.Queue[dict[str, str]] = asyncio.Queue(maxsize=10_000)

        def follower(source: str, line: str) -> None:
            if (kind is None or source == kind or source.startswith(kind + ".")) \
                    and not queue.full():
                queue.put_nowait({"source": source, "line": line})

        app.followers.add(follower)
        try:
            return await stream(request, lines, queue)
        finally:
            app.followers.discard(follower)

    async def destroy(self, request: web.Request) -> Any:
        """DELETE /apps/APP -> {"removed": [...], "kept": [...]}"""
        return await finish(self.app(request).destroy())

    async def cloudflare_refresh(self, request: web.Request) -> Any:
        """POST /cloudflare/refresh -> {"changed", "file", "ranges", "ipv4", "ipv6",
        "sources": [{"url", "ranges"}], "nginx", "apps": [{"name", "site", "error"}]}

        Downloads the lists of ``cloudflare_urls``; a bad list is cloudflare_failed
        and changes nothing. The sites of running apps with NGINX_CLOUDFLARE_ACL
        are re-published when the ranges changed.
        """
        return await finish(self.cloudflare.refresh())

    async def events(self, request: web.Request) -> Any:
        """GET /events?lines=N[&app=APP][&follow=1]"""
        app = request.query.get("app") or None
        recent = self.registry.events.last(int_query(request, "lines", 100), app)
        if not flag(request, "follow"):
            return {"events": recent}
        queue = self.registry.events.subscribe()
        try:
            return await stream(request, recent, queue)
        finally:
            self.registry.events.unsubscribe(queue)


async def stream(request: web.Request, first: list[Any], queue: asyncio.Queue[Any]
                 ) -> web.StreamResponse:
    """Send ``first`` then whatever arrives on ``queue`` as NDJSON until the client leaves."""
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    try:
        for item in first:
            await response.write(ndjson_line(item))
        while True:
            await response.write(ndjson_line(await queue.get()))
    except ConnectionResetError:
        pass        # the client left; with handler_cancellation a silent one is cancelled
    return response


async def finish(action: Awaitable[T]) -> T:
    """Await an action that changes processes in a task of its own.

    A client that leaves (Ctrl-C on `piku restart`) cancels its handler; the
    action itself goes on to its end, so no switch is ever cut in half.
    """
    return await asyncio.shield(asyncio.ensure_future(action))


def push_info(data: dict[str, Any]) -> PushInfo:
    fields = {"revision", "ref", "old", "pusher", "fingerprint", "git_env"}
    unknown = set(data) - fields
    if unknown:
        raise BadRequest(f"unknown field(s): {', '.join(sorted(unknown))}")
    texts = {key: data.get(key, "") for key in fields - {"git_env"}}
    git_env = data.get("git_env", {})
    if not all(isinstance(v, str) for v in texts.values()) or not isinstance(git_env, dict) \
            or not all(isinstance(v, str) for v in git_env.values()):
        raise BadRequest("revision, ref, old, pusher and fingerprint must be strings, "
                         "git_env an object of strings")
    old = texts["old"] and validate_revision(texts["old"])
    return PushInfo(validate_revision(texts["revision"]), validate_ref(texts["ref"]), old,
                    texts["pusher"], texts["fingerprint"], git_env)


async def run_action(request: web.Request, action: Callable[[Progress], Awaitable[Any]]) -> Any:
    """Run a long action; with ``?progress=1`` stream its progress lines as NDJSON.

    The action runs in a task of its own: a client that leaves (an interrupted
    push) does not cut a deploy in half.
    """
    if not flag(request, "progress"):
        return await finish(action(lambda line: None))
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    task = asyncio.ensure_future(action(queue.put_nowait))
    task.add_done_callback(lambda _: queue.put_nowait(None))    # after the action's last line
    response = web.StreamResponse(headers={"Content-Type": NDJSON})
    await response.prepare(request)
    try:
        while (line := await queue.get()) is not None:
            await response.write(ndjson_line({"progress": line}))
        try:
            result = {"end": True, "data": task.result()}
        except PikudError as exc:
            result = error(exc.code, str(exc))
        except Exception as exc:
            log.exception("%s %s failed", request.method, request.path)
            result = error("internal_error", f"pikud failed: {exc.__class__.__name__}: {exc}")
        await response.write(ndjson_line(result))
    except ConnectionResetError:
        pass        # the client left; the action goes on to its end
    return response


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

    async def start(self) -> None:
        await self.runner.setup()
        self._sock = bind_socket(self.path)
        await web.SockSite(self.runner, self._sock).start()

    async def stop(self) -> None:
        await self.runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def daemon_status(started: float, loop_name: str, registry: AppRegistry) -> dict[str, Any]:
    return {"version": __version__, "pid": os.getpid(), "uptime": time.monotonic() - started,
            "loop": loop_name, "root": str(registry.paths.root),
            "apps": len(registry.names()), "processes": registry.process_count()}
