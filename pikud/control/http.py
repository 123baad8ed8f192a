"""The control socket's HTTP/1.1 server: asyncio streams, h11 for the protocol.

Each connection reads one request whole (head and body, within the idle
timeout), hands it to ``respond`` and writes what comes back: a ``Reply``
(one JSON body, Content-Length) or a ``Stream`` the handler has written
itself (chunked). Keep-alive, ``Connection: close``, ``Expect: 100-continue``
and HEAD are h11's and ours; a malformed request gets a 400 envelope and the
connection closes. A client that leaves (EOF or reset) while its request is
handled cancels the handler, so followed logs and events end with it; an
action that must not be cut in half shields itself (handlers.finish).
"""

# Design notes:
# - Why not aiohttp: its package imports its HTTP client (and SSL contexts)
#   with the server; on a daemon behind nginx that was 15 MiB of the daemon's
#   RSS for a socket that only our CLI and curl speak to. h11 is pure Python,
#   sans-IO and small; asyncio streams carry the bytes.
# - The idle timeout runs from the accept and after each answer, and covers
#   the whole request: a connection that does not complete one in time is
#   closed without an answer (as aiohttp's keep-alive timer did).
# - A body larger than MAX_BODY is read and dropped up to DRAIN_BODY more,
#   so the answer (413 when the handler reads it) is not lost to a reset
#   (closing a unix socket with unread data resets the peer).
# - Bounded against a flood (an app process can reach the socket before its
#   pid is checked, and holds a connection for the idle timeout): at most
#   MAX_LINKS connections, so pikud keeps descriptors to spawn with; and
#   while a request is answered at most a head's worth of what follows is
#   read (the stream reader then pauses the transport).

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import unquote

import h11

from pikud.control.protocol import MAX_BODY, error
from pikud.control.request import Headers, Reply, Request, RouteTable, Stream, Values, split_target

log = logging.getLogger(__name__)
Respond = Callable[[Request], Awaitable[Reply | Stream]]
JSON = "application/json; charset=utf-8"
READ_SIZE = 65536
MAX_HEAD = 16384            # bytes of request line and headers
DRAIN_BODY = 1 << 20        # bytes of an over-large body read and dropped before closing
MAX_LINKS = 256             # open connections; one more is closed at once


class Link:
    """One connection: h11's state, the streams, and whether a request is being answered."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.busy = False
        self.closing = False        # draining: say Connection: close in the answer
        self._head = False          # the answer's head is out
        self._head_only = False     # HEAD: no body goes out

    async def _event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        """The next event; never NEED_DATA (more is read until there is one)."""
        while True:
            event = self.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.h11.receive_data(await self.reader.read(READ_SIZE))

    async def next_request(self, server: HttpServer) -> Request | None:
        """The next request, read whole; None once the client closed, was too slow, or
        sent something that is not HTTP (answered 400)."""
        try:
            async with asyncio.timeout(server.idle_timeout):
                event = await self._event()
                if not isinstance(event, h11.Request):
                    return None             # closed (or a pipelined request after an error)
                if self.h11.they_are_waiting_for_100_continue:
                    await self._write(h11.InformationalResponse(status_code=100, headers=[]))
                body = await self._body()
        except TimeoutError:
            return None
        except h11.RemoteProtocolError as exc:
            await self._refuse(exc)
            return None
        self.busy, self._head = True, False
        method = event.method.decode("ascii")
        self._head_only = method == "HEAD"
        target = event.target.decode("latin-1")
        segments, query = split_target(target)
        route, names, handler = server.routes.resolve(method, segments)
        fields = [(name.decode("latin-1"), value.decode("latin-1"))
                  for name, value in event.headers]
        return Request(method, unquote("/".join(segments)), query, Headers(fields), body,
                       self.writer.transport, self, server.app, handler,
                       route.pattern if route is not None else None, names)

    async def _body(self) -> bytes | None:
        parts, size = [], 0
        while not isinstance(event := await self._event(), h11.EndOfMessage):
            if not isinstance(event, h11.Data):
                raise h11.RemoteProtocolError("the connection closed inside a request body")
            size += len(event.data)
            if size > MAX_BODY + DRAIN_BODY:
                return None
            if size <= MAX_BODY:
                parts.append(event.data)
        return b"".join(parts) if size <= MAX_BODY else None

    async def answer(self, request: Request, respond: Respond) -> None:
        """Run ``respond`` until it answers or the client leaves; write a ``Reply``."""
        handler = asyncio.ensure_future(respond(request))
        watch = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait((handler, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watch, handler):       # the watch's read must end before the next
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        if handler.cancelled():
            raise ConnectionResetError("the client left")
        result = handler.result()
        if isinstance(result, Reply):
            if self._head:
                log.error("%s %s: an error after its stream began: %s", request.method,
                          request.path, result.body)
            else:
                payload = json.dumps(result.body).encode()
                await self.start(result.status, JSON, len(payload))
                await self.send(payload)
        await self._write(h11.EndOfMessage())
        self.busy = False

    async def _watch(self) -> None:
        """Return when the client leaves; what it sends meanwhile waits for the next cycle,
        up to a head's worth: past that nothing more is read until the answer is out."""
        size = 0
        with contextlib.suppress(OSError):
            while size <= MAX_HEAD:
                data = await self.reader.read(MAX_HEAD + 1 - size)
                if not data:
                    return
                self.h11.receive_data(data)
                size += len(data)
            await asyncio.get_running_loop().create_future()    # cancelled by ``answer``

    def reusable(self) -> bool:
        """Whether another request may follow on this connection (h11 starts its cycle)."""
        if self.closing or self.h11.our_state is not h11.DONE \
                or self.h11.their_state is not h11.DONE:
            return False
        self.h11.start_next_cycle()
        return True

    async def start(self, status: int, content_type: str, length: int | None) -> None:
        headers = [("Content-Type", content_type)]
        if length is not None:
            headers.append(("Content-Length", str(length)))
        if self.closing:
            headers.append(("Connection", "close"))
        self._head = True
        await self._write(h11.Response(status_code=status, headers=headers,
                                       reason=HTTPStatus(status).phrase))

    async def send(self, data: bytes) -> None:
        if not self._head_only:
            await self._write(h11.Data(data=data))

    async def _write(self, event: h11.Event) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("the client left")
        self.writer.write(self.h11.send(event) or b"")
        await self.writer.drain()

    async def _refuse(self, exc: h11.RemoteProtocolError) -> None:
        """Answer a malformed request with the error envelope, if an answer can still go."""
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        status = exc.error_status_hint
        payload = json.dumps(error("bad_request", f"malformed HTTP request: {exc}")).encode()
        self.closing = True
        with contextlib.suppress(OSError, h11.LocalProtocolError):
            await self.start(status, JSON, len(payload))
            await self.send(payload)
            await self._write(h11.EndOfMessage())


class HttpServer:
    """Accepts on a listening socket; ``drain`` ends the connections gracefully."""

    def __init__(self, routes: RouteTable, app: Values, respond: Respond,
                 idle_timeout: float, max_links: int = MAX_LINKS) -> None:
        self.routes, self.app, self.respond = routes, app, respond
        self.idle_timeout, self.max_links = idle_timeout, max_links
        self._refusing = False      # connections are being refused: said once per burst
        self._links: dict[asyncio.Task[None], Link] = {}
        self._server: asyncio.AbstractServer | None = None
        self._draining = False

    async def accept(self, sock: socket.socket) -> None:
        """Accept connections on ``sock`` (the server owns and closes it at ``pause``)."""
        self._draining = False
        self._server = await asyncio.start_server(self._connection, sock=sock, backlog=128)

    def pause(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._links) >= self.max_links:
            if not self._refusing:
                log.warning("control connections: %d open, closing new ones until one ends",
                            len(self._links))
            self._refusing = True
            writer.close()
            return
        self._refusing = False
        link = self._links[task] = Link(reader, writer)
        try:
            while not self._draining:
                request = await link.next_request(self)
                if request is None:
                    break
                await link.answer(request, self.respond)
                if not link.reusable():
                    break
        except ConnectionError:
            pass            # the client left
        except Exception:
            log.exception("control connection failed")
        finally:
            del self._links[task]
            writer.close()

    async def drain(self, timeout: float) -> None:
        """Stop accepting; close the connections waiting for a request now and the others
        once answered; after ``timeout``, cut those still going (streams)."""
        self.pause()
        self._draining = True
        for task, link in list(self._links.items()):
            link.closing = True
            if not link.busy:
                task.cancel()
        tasks = list(self._links)
        if not tasks:
            return
        _, going = await asyncio.wait(tasks, timeout=timeout)
        for task in going:
            task.cancel()
        await asyncio.gather(*going, return_exceptions=True)
