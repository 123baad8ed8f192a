"""pikud's own HTTP router: the reverse proxy in front of the apps when there is no nginx.

One aiohttp server on a configurable address (default 127.0.0.1:8080) routes
each request to one app, by its Host or by the path prefix ``/_/APP/``
(``routing.py`` decides which). The app's static folders are served here
(``static.py``); everything else goes to its
upstreams (``127.0.0.1:PORT`` or ``unix:/abs/path.sock``) in round robin,
WebSocket upgrades included. The router's own answers are short plain text:
404 for an unknown app or file, 502 when no upstream answered, 503 when the
app has no upstream. Client connections are held to the limits of
``proxy/connections.py``: a header timeout, a keep-alive timeout, a cap and a
reserve of descriptors the router never takes.

Design notes
------------
* The table is immutable: ``set_route``/``remove`` build a new one and swap it
  in one assignment. A request reads it once, so it sees the old generation or
  the new one, never a mix, and requests in flight keep their connection and
  finish (the caller stops the old processes after a grace period).
* A connection error (refused, ENOENT, connect timeout) comes before any byte
  of the body was sent, so the next upstream gets the same request. A later
  error is a 502 before the response started, a cut connection after it.
* One upstream connection per request (``force_close``), as piku's nginx site
  does (no upstream ``keepalive``): a pooled idle connection to a process that
  is stopping can be reset under a POST that cannot be retried.
* Headers follow piku's nginx site: Host as sent, X-Forwarded-For set to the
  peer (the router is the edge, so an incoming value is only the client's
  claim), X-Forwarded-Proto/-Host/-Port, X-Request-Start ($msec). Requests
  routed by prefix also get X-Forwarded-Prefix, and an absolute-path Location
  in their response gets the prefix back.
* The upstream sessions never decompress, keep cookies, follow redirects or
  add headers of their own. A session per unix socket path (aiohttp's
  UnixConnector has one path) is closed once no route names its path and no
  request uses it.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from pikud.errors import PikudError
from pikud.proxy.connections import Connections
from pikud.proxy.routing import (
    Redirect,
    Route,
    Target,
    forwarded,
    host_name,
    host_table,
    match_static,
    prefixed_location,
    resolve,
    upstream_url,
)
from pikud.proxy.static import serve_static
from pikud.settings import ConnectionLimits

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 5.0
HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding",
                        "upgrade", "expect"})   # Expect: the router answers 100-continue itself
WS_OWN = frozenset({"sec-websocket-key", "sec-websocket-version", "sec-websocket-protocol",
                    "sec-websocket-extensions"})
_NOT_SENDABLE = frozenset({1005, 1006, 1015})     # close codes for "no frame", never sent
_CONNECT_ERRORS = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def forward_headers(headers: Iterable[tuple[str, str]], drop: Iterable[str] = ()
                    ) -> CIMultiDict[str]:
    """``headers`` without hop-by-hop ones: the fixed set, Proxy-*, those named by Connection."""
    headers = list(headers)
    named = {t.strip().lower() for k, v in headers if k.lower() == "connection"
             for t in v.split(",")}
    skip = HOP_BY_HOP | named | set(drop)
    return CIMultiDict((k, v) for k, v in headers
                       if k.lower() not in skip and not k.lower().startswith("proxy-"))


# --- the server -----------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    route: Route
    upstreams: tuple[tuple[str, str | None], ...]
    turns: Iterator[int] = field(default_factory=itertools.count, compare=False)


@dataclass(frozen=True)
class _Table:
    apps: Mapping[str, _Entry] = field(default_factory=dict)
    hosts: Mapping[str, str] = field(default_factory=dict)


class Router:
    """The HTTP server; ``set_route``/``remove`` may be called before or after ``start``."""

    def __init__(self, host: str, port: int, limits: ConnectionLimits = ConnectionLimits()
                 ) -> None:
        self._host, self._port = host, port
        self._connections = Connections(limits)
        self._bound_port = port
        self._table = _Table()
        self._runner: web.AppRunner | None = None
        self._tcp: aiohttp.ClientSession | None = None
        self._unix: dict[str, aiohttp.ClientSession] = {}
        self._busy: collections.Counter[aiohttp.ClientSession] = collections.Counter()
        self._closing: set[asyncio.Task[None]] = set()
        self._websockets: set[web.WebSocketResponse] = set()

    async def start(self, inherited: list[socket.socket] | None = None) -> None:
        """Serve on the configured address, or on listeners ``inherited`` (a re-exec)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._serve)
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=SHUTDOWN_TIMEOUT,
                               keepalive_timeout=self._connections.limits.keepalive_timeout)
        await runner.setup()
        assert runner.server is not None
        try:
            await self._connections.listen(runner.server, self._host, self._port, inherited)
        except OSError as exc:
            await runner.cleanup()
            raise PikudError(f"cannot serve HTTP on {self._host}:{self._port}: "
                             f"{exc.strerror or exc}") from exc
        self._runner = runner
        self._bound_port = self.address[1]
        self._tcp = self._session(aiohttp.TCPConnector(force_close=True))
        log.info("router: serving HTTP on %s:%d", *self.address)

    async def stop(self) -> None:
        """Stop serving; requests in flight get SHUTDOWN_TIMEOUT, WebSockets a 1001 close."""
        await asyncio.gather(*(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
                               for ws in list(self._websockets)))
        await self._connections.close()
        if self._runner is not None:
            await self._runner.cleanup()      # finishes requests in flight, bounded
            self._runner = None
        sessions = [s for s in (self._tcp, *self._unix.values()) if s is not None]
        self._tcp, self._unix = None, {}
        await asyncio.gather(*(s.close() for s in sessions), *self._closing)

    async def drain(self, timeout: float) -> None:
        """Before a re-exec: stop accepting (connections wait in the backlog for the next
        image), finish the requests in flight within ``timeout``, and close every client
        connection at a request boundary (``Connection: close``). WebSockets get 1001."""
        await asyncio.gather(*(ws.close(code=aiohttp.WSCloseCode.GOING_AWAY)
                               for ws in list(self._websockets)))
        await self._connections.drain(timeout)

    def resume(self) -> None:
        """Accept again after ``drain`` (the re-exec did not happen)."""
        self._connections.undrain()

    def listeners(self) -> list[int]:
        """The listening sockets' descriptors, for the next image."""
        return self._connections.listeners()

    def snapshot(self) -> dict[str, object]:
        """The table as the re-exec bridge routes by it (``bridge.Snapshot``)."""
        table = self._table
        return {"hosts": dict(table.hosts), "port": self._bound_port,
                "upstreams": {a: list(e.route.upstreams) for a, e in table.apps.items()},
                "static": {a: [url for url, _ in e.route.static] for a, e in table.apps.items()}}

    @property
    def serving(self) -> bool:
        """Bound and listening: /status may ask before (the socket opens first)."""
        return self._connections.serving

    @property
    def address(self) -> tuple[str, int]:
        return self._connections.address

    @property
    def address_wanted(self) -> tuple[str, int]:
        """Where it is set to serve (port 0: any free one)."""
        return self._host, self._port

    def set_route(self, route: Route) -> None:
        """Add or replace ``route.app``; ValueError for a malformed upstream."""
        entry = _Entry(route, tuple(upstream_url(u) for u in route.upstreams))
        self._swap({**self._table.apps, route.app: entry})
        log.info("router: %s -> %s", route.app, ", ".join(route.upstreams) or "no upstream")

    def remove(self, app: str) -> None:
        self._swap({a: e for a, e in self._table.apps.items() if a != app})
        log.info("router: %s removed", app)

    def _swap(self, apps: dict[str, _Entry]) -> None:
        hosts, conflicts = host_table(e.route for e in apps.values())
        for conflict in conflicts:
            log.warning("router: host name claimed twice: %s", conflict)
        self._table = _Table(apps, hosts)      # the one assignment requests can see
        used = {path for e in apps.values() for _, path in e.upstreams}
        for path in [p for p in self._unix if p not in used]:
            self._close_when_idle(self._unix.pop(path))

    # --- upstream sessions --------------------------------------------------
    @staticmethod
    def _session(connector: aiohttp.BaseConnector) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=connector, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT))

    def _acquire(self, unix_path: str | None) -> aiohttp.ClientSession:
        if unix_path is None:
            session = self._tcp
        else:
            session = self._unix.get(unix_path)
            if session is None and self._tcp is not None:
                session = self._unix[unix_path] = self._session(
                    aiohttp.UnixConnector(unix_path, force_close=True))
        if session is None:
            raise web.HTTPServiceUnavailable(text="503 the router is stopping\n")
        self._busy[session] += 1
        return session

    def _release(self, session: aiohttp.ClientSession) -> None:
        self._busy[session] -= 1
        self._close_when_idle(session)

    def _close_when_idle(self, session: aiohttp.ClientSession) -> None:
        """Close a unix session that no route names once no request uses it."""
        if session is self._tcp or session in self._unix.values() or self._busy[session]:
            return
        del self._busy[session]
        task = asyncio.get_running_loop().create_task(session.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    # --- requests -----------------------------------------------------------
    async def _serve(self, request: web.Request) -> web.StreamResponse:
        with self._connections.request(request.protocol):
            response = await self._handle(request)
            if self._connections.draining and not response.prepared:
                response.force_close()          # Connection: close
            return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        table = self._table
        host = request.headers.get("Host", "")
        target = resolve(table.hosts, table.apps, host, request.raw_path)
        if isinstance(target, Redirect):
            raise web.HTTPPermanentRedirect(target.location)
        if target is None:
            return _text(404, f"no app for host {host_name(host)!r} or path {request.path!r}")
        entry = table.apps[target.app]
        found = match_static(entry.route.static, unquote(target.path.partition("?")[0]))
        if found is not None:
            response = serve_static(request, *found)
            return response or _text(404, f"no file {request.path!r} in app {target.app!r}")
        if not entry.upstreams:
            return _text(503, f"app {target.app!r} has no running web process")
        websocket = request.headers.get("Upgrade", "").lower() == "websocket"
        headers = self._headers(request, target, drop=WS_OWN if websocket else ())
        first = next(entry.turns)
        for i in range(len(entry.upstreams)):
            base, unix_path = entry.upstreams[(first + i) % len(entry.upstreams)]
            url = URL(base + target.path, encoded=True)
            session = self._acquire(unix_path)
            try:
                if websocket:
                    return await self._websocket(request, session, url, headers)
                return await self._http(request, session, url, headers, target)
            except _CONNECT_ERRORS as exc:
                log.info("router: %s: %s unreachable (%s), trying the next", target.app,
                         base if unix_path is None else unix_path, exc.__class__.__name__)
            except aiohttp.WSServerHandshakeError as exc:
                log.warning("router: %s: WebSocket handshake refused: %s", target.app, exc)
                return _text(502, f"app {target.app!r} refused the WebSocket")
            except aiohttp.ClientError as exc:
                log.warning("router: %s: upstream failed: %r", target.app, exc)
                return _text(502, f"app {target.app!r} did not answer")
            finally:
                self._release(session)
        log.warning("router: %s: no upstream answered", target.app)
        return _text(502, f"no web process of app {target.app!r} answered")

    def _headers(self, request: web.Request, target: Target, drop: Iterable[str]
                 ) -> CIMultiDict[str]:
        headers = forward_headers(request.headers.items(), drop=drop)
        headers.popall("X-Forwarded-Prefix", None)
        for name, value in forwarded(request.remote or "", request.scheme,
                                     request.headers.get("Host", ""), self._bound_port,
                                     target.prefix):
            headers[name] = value
        return headers

    async def _http(self, request: web.Request, session: aiohttp.ClientSession, url: URL,
                    headers: CIMultiDict[str], target: Target) -> web.StreamResponse:
        body = request.content if request.body_exists else None
        async with session.request(request.method, url, headers=headers, data=body,
                                   allow_redirects=False) as upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            response.headers.extend(forward_headers(upstream.headers.items()))
            if self._connections.draining:
                response.force_close()          # Connection: close
            if "Location" in response.headers:
                response.headers["Location"] = prefixed_location(response.headers["Location"],
                                                                 target.prefix)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except aiohttp.ClientError as exc:      # the body broke off: so must ours
                log.warning("router: %s: upstream broke off the response: %r", target.app, exc)
                if request.transport is not None:
                    request.transport.abort()
                return response
            except ConnectionError:                 # the client went away
                return response
            await response.write_eof()
            return response

    async def _websocket(self, request: web.Request, session: aiohttp.ClientSession,
                         url: URL, headers: CIMultiDict[str]) -> web.StreamResponse:
        offered = request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        protocols = [p.strip() for p in offered if p.strip()]
        async with session.ws_connect(url, headers=headers, protocols=protocols,
                                      max_msg_size=0) as upstream:
            client = web.WebSocketResponse(protocols=[upstream.protocol] if upstream.protocol
                                           else (), max_msg_size=0)
            await client.prepare(request)
            self._websockets.add(client)
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(_pump(client, upstream))
                    tasks.create_task(_pump(upstream, client))
            finally:
                self._websockets.discard(client)
            return client


WebSocket = web.WebSocketResponse | aiohttp.ClientWebSocketResponse


async def _pump(source: WebSocket, sink: WebSocket) -> None:
    """Copy frames until ``source`` closes, then close ``sink`` with the same code."""
    try:
        async for msg in source:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(msg.data)
    except ConnectionError:         # the sink is gone; closing it below is a no-op
        pass
    code = source.close_code
    if code is None or code in _NOT_SENDABLE:
        code = aiohttp.WSCloseCode.GOING_AWAY
    await sink.close(code=code)


def _text(status: int, message: str) -> web.Response:
    return web.Response(status=status, text=f"{status} {message}\n")
