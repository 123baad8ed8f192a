"""The router's listening sockets and client connections: timeouts, a cap and a descriptor reserve.

* A client must send a complete request head within ``header_timeout`` of
  connecting, and of the first byte of each later request; a connection idle
  between requests is closed after ``keepalive_timeout`` (aiohttp's own
  timer, which also runs from the accept).
* At most ``max_connections`` client connections, and never so many
  descriptors that fewer than ``fd_reserve`` are left of the open-files limit
  beyond what a spawn keeps free (one per live process, to stop it, and
  procman/descriptors.py's own reserve): those are for what only the daemon
  can do (spawning processes, their log pipes and pidfds, the control
  socket, deploys).
* Reaching either, the router first closes idle keep-alive connections,
  oldest first, 32 at a time (nginx: "reusing connections"); when none is
  idle it stops accepting, so new connections wait in the kernel's listen
  backlog, and accepts again once there is room (a request ends, a
  connection closes, or a second has passed).

Design notes
------------
* aiohttp has no header timeout, so each connection's protocol is aiohttp's
  handler behind a thin ``_Connection`` that forwards every protocol call and
  keeps the timer; the router marks a connection busy from the moment its
  handler is called (the head is complete) until it returns. Idle means not
  busy with nothing left to write. aiohttp writes a response the handler
  returns after the handler, in the same step unless the write blocks (then
  the buffer is not empty); a static file, opened in a thread first, is the
  one answer that a reuse could cut.
* Counting descriptors: the router knows its own (each client connection, and
  one upstream socket per request in flight); the rest of the daemon's are
  learnt by listing /proc/self/fd at most once a second, on an accept or
  while paused (1,000 entries cost about 0.75 ms here). Between two counts
  the rest may grow: that growth is what the reserve is for.
* Pausing: the loop's server is closed, but a duplicate of each listening
  socket stays open, so the socket keeps listening and queueing; resuming
  makes a new server on another duplicate. Closing a server leaves its
  connections open (asyncio and uvloop alike), and it works on both loops,
  which have no public "pause accepting". Accepting at the limit itself is
  worse: libuv then accepts and drops connections, asyncio stops for a second.
* asyncio accepts up to BACKLOG connections in one go before any protocol
  exists, so the router may overshoot by that much: the default reserve is
  larger than BACKLOG.
* Draining (before a re-exec): the listeners stay open but nothing accepts,
  so new connections wait in the backlog for the next image. Every answer
  from then on says ``Connection: close``. A keep-alive connection left idle
  by an earlier answer gets IDLE_GRACE to send one more request (answered
  with close) before it is closed: closing it at once could cut a request
  its client is sending at that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, cast

from pikud.fds import duplicate, open_descriptors, open_files_limit
from pikud.procman.children import spawn_reserve
from pikud.settings import ConnectionLimits

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

BACKLOG = 128
RECOUNT_INTERVAL = 1.0      # seconds between two listings of /proc/self/fd
REUSE_BATCH = 32            # idle connections closed at once when short (as nginx)
IDLE_GRACE = 0.1            # seconds an idle keep-alive connection has to send one more request


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's handler behind it, and the header timer."""

    def __init__(self, owner: Connections, handler: web.RequestHandler) -> None:
        self.owner = owner
        self.handler = handler
        self.busy = False
        self.transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)   # uvloop's is not a subclass
        self.handler.connection_made(self.transport)
        self.start_timer()
        self.owner.opened(self)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self._timer is None:       # the first byte of a request
            self.start_timer()
        self.handler.data_received(data)

    def eof_received(self) -> None:          # aiohttp's returns None: the transport closes
        self.handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_timer()
        self.handler.connection_lost(exc)
        self.owner.closed(self)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def start_timer(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.owner.limits.header_timeout, self._header_timeout)

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _header_timeout(self) -> None:
        self._timer = None
        if not self.busy:
            log.debug("router: closed a connection without a complete request head in %gs",
                      self.owner.limits.header_timeout)
            self.handler.force_close()

    @property
    def idle(self) -> bool:
        """Between requests, with nothing left to send."""
        return (not self.busy and self.transport is not None
                and self.transport.get_write_buffer_size() == 0)


class Connections:
    """The router's listeners and its client connections, held to ``limits``."""

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self._open: dict[web.RequestHandler, _Connection] = {}   # least recently used first
        self._in_flight = 0
        self._handlers: Callable[[], web.RequestHandler] | None = None
        self._held: list[socket.socket] = []           # the listening sockets, kept while paused
        self._servers: list[asyncio.AbstractServer] = []
        self._resuming: asyncio.Task[None] | None = None
        self._recheck: asyncio.TimerHandle | None = None
        self._ceiling = 0                               # descriptors the daemon may have open
        self._others = 0                                # of those, not the router's connections
        self._counted = -RECOUNT_INTERVAL
        self.draining = False
        self._drained: asyncio.Event | None = None      # set once no connection is left

    async def listen(self, handlers: Callable[[], web.RequestHandler], host: str, port: int,
                     inherited: list[socket.socket] | None = None) -> None:
        """Serve ``handlers`` (aiohttp's server) on ``host``:``port``, or on the listening
        sockets ``inherited`` from the previous image; OSError if it cannot."""
        self._handlers = handlers
        loop = asyncio.get_running_loop()
        if inherited:
            self._held = inherited
            self._servers = [await loop.create_server(self._accept, sock=duplicate(sock),
                                                      backlog=BACKLOG) for sock in inherited]
        else:
            server = await loop.create_server(self._accept, host, port, backlog=BACKLOG)
            self._servers = [server]
            self._held = [duplicate(s) for s in server.sockets]
        limit = open_files_limit()
        self._ceiling = limit - self.limits.fd_reserve
        self._count()
        room = self._ceiling - spawn_reserve() - self._others
        log.info("router: up to %d connections: %d descriptors of %d, %d kept in reserve",
                 min(room, self.limits.max_connections), room, limit, limit - room)
        if room < BACKLOG:
            log.warning("router: only %d descriptors left for connections: raise LimitNOFILE "
                        "or lower router_fd_reserve (%d)", room, self.limits.fd_reserve)

    @property
    def serving(self) -> bool:
        return bool(self._held)

    @property
    def address(self) -> tuple[str, int]:
        if not self._held:
            raise RuntimeError("the router is not serving")
        host, port = self._held[0].getsockname()[:2]
        return str(host), int(port)

    def listeners(self) -> list[int]:
        """The listening sockets' descriptors (for a re-exec)."""
        return [sock.fileno() for sock in self._held]

    async def drain(self, timeout: float) -> None:
        """Stop accepting, keep listening, and wait (at most ``timeout``) until every client
        connection has closed at a request boundary (see the design notes)."""
        self.draining = True
        self._drained = asyncio.Event()
        self._stop_accepting()
        for conn in list(self._open.values()):
            if not conn.busy:
                self._close_when_idle(conn)
        self._check_drained()
        try:
            async with asyncio.timeout(timeout):
                await self._drained.wait()
        except TimeoutError:
            log.warning("router: %d connections still open after %gs; closing them",
                        len(self._open), timeout)
            for conn in list(self._open.values()):
                conn.handler.force_close()

    def undrain(self) -> None:
        """Accept again (a re-exec that did not happen)."""
        self.draining, self._drained = False, None
        self._resume_if_room()

    def _close_when_idle(self, conn: _Connection) -> None:
        def close() -> None:
            if conn.idle and self._open.get(conn.handler) is conn:
                conn.handler.force_close()
        asyncio.get_running_loop().call_later(IDLE_GRACE, close)

    def _check_drained(self) -> None:
        if self._drained is not None and not self._open:
            self._drained.set()

    def _stop_accepting(self) -> None:
        if self._recheck is not None:
            self._recheck.cancel()
        if self._resuming is not None:
            self._resuming.cancel()
            self._resuming = None
        for server in self._servers:
            server.close()
        self._servers = []

    async def close(self) -> None:
        """Stop listening; the connections are aiohttp's to close."""
        if self._recheck is not None:
            self._recheck.cancel()
        if self._resuming is not None:
            self._resuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resuming
        for server in self._servers:
            server.close()
        for sock in self._held:
            sock.close()
        self._servers, self._held = [], []

    @contextlib.contextmanager
    def request(self, handler: web.RequestHandler) -> Iterator[None]:
        """While a request is handled: its connection is busy, with one upstream socket."""
        conn = self._open.get(handler)
        if conn is not None:
            conn.busy = True
            conn.stop_timer()
            if self.draining:
                handler.close()         # this answer, marked so, is the connection's last
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if conn is not None:
                conn.busy = False
                if self._open.pop(handler, None) is conn:
                    self._open[handler] = conn             # now the most recently used
            if self.draining and conn is not None:     # its answer may have said keep-alive
                self._close_when_idle(conn)
            elif not self._servers:     # once aiohttp has sent the answer, it may be idle
                asyncio.get_running_loop().call_soon(self._resume_if_room)

    # --- the connections ----------------------------------------------------
    def _accept(self) -> _Connection:
        assert self._handlers is not None
        return _Connection(self, self._handlers())

    def opened(self, conn: _Connection) -> None:
        self._open[conn.handler] = conn
        why = self._make_room(spare=conn)
        if why is not None:
            self._pause(why)

    def closed(self, conn: _Connection) -> None:
        self._open.pop(conn.handler, None)
        if self.draining:
            self._check_drained()
        elif not self._servers:
            self._resume_if_room()

    def _count(self) -> None:
        try:
            total = open_descriptors()
        except OSError:         # not even a descriptor to list them with: count as full
            total = self._ceiling + self.limits.fd_reserve
        self._others = total - len(self._open) - self._in_flight
        self._counted = time.monotonic()

    def _make_room(self, spare: _Connection | None) -> str | None:
        """Room for one more connection (None), after closing idle ones if need be; else why not.

        Like nginx, this reuses idle connections as the limit comes near, not
        only once a new connection is refused: the router cannot see one
        waiting in the backlog.
        """
        if time.monotonic() - self._counted >= RECOUNT_INTERVAL:
            self._count()
        why = self._shortage()
        if why is not None and self._reuse(why, spare):
            why = self._shortage()
        return why

    def _shortage(self) -> str | None:
        """Why the router may not take another connection now, or None."""
        used = self._others + len(self._open) + self._in_flight
        spawning = spawn_reserve()
        if used >= self._ceiling - spawning:
            return (f"{used} descriptors open, {self.limits.fd_reserve + spawning} of the limit "
                    f"{self._ceiling + self.limits.fd_reserve} are kept in reserve "
                    f"(router_fd_reserve, and {spawning} that spawns keep free)")
        if len(self._open) >= self.limits.max_connections:
            return f"{len(self._open)} connections, router_max_connections is reached"
        return None

    def _reuse(self, why: str, spare: _Connection | None) -> int:
        """Close up to REUSE_BATCH idle connections, oldest first; return how many."""
        idle = []
        for conn in self._open.values():
            if conn is not spare and conn.idle:
                idle.append(conn)
                if len(idle) == REUSE_BATCH:
                    break
        for conn in idle:
            del self._open[conn.handler]        # its descriptor is freed as it closes
            conn.handler.force_close()
        if idle:
            log.warning("router: %s: closed %d idle keep-alive connections", why, len(idle))
        return len(idle)

    # --- accepting or not -----------------------------------------------------
    def _pause(self, why: str) -> None:
        if not self._servers or self.draining:
            return
        for server in self._servers:
            server.close()
        self._servers = []
        log.warning("router: %s: not accepting; new connections wait in the listen backlog", why)
        self._recheck = asyncio.get_running_loop().call_later(RECOUNT_INTERVAL,
                                                              self._resume_if_room)

    def _resume_if_room(self) -> None:
        if self._servers or self._resuming is not None or not self._held or self.draining:
            return
        if self._recheck is not None:
            self._recheck.cancel()
        if self._make_room(spare=None) is not None:
            self._recheck = asyncio.get_running_loop().call_later(RECOUNT_INTERVAL,
                                                                  self._resume_if_room)
            return
        self._resuming = asyncio.get_running_loop().create_task(self._resume())

    async def _resume(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            for sock in self._held:
                self._servers.append(await loop.create_server(self._accept, sock=duplicate(sock),
                                                              backlog=BACKLOG))
        except OSError as exc:          # no descriptor for the duplicate after all
            for server in self._servers:
                server.close()
            self._servers = []
            log.warning("router: cannot accept again yet: %s", exc.strerror or exc)
            self._recheck = loop.call_later(RECOUNT_INTERVAL, self._resume_if_room)
        else:
            log.info("router: accepting connections again (%d open)", len(self._open))
        finally:
            self._resuming = None
