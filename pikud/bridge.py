"""The re-exec bridge: a small process that serves the router's port while pikud execs.

``python -m pikud.bridge CHANNEL LISTENER...`` (descriptor numbers). During a
re-exec the new image starts Python and imports aiohttp before its router
accepts again (about 0.3 s on 2 cores), and clients would wait in the listen
backlog meanwhile. The old image starts this bridge during the preflight, so
that its start costs nothing then; hands it a routing snapshot just before
its own router stops accepting; and carries its end of the channel across
the exec. The new image closes that end once its router accepts: the bridge
then stops accepting, finishes its connections and exits (reexec.py).

The channel is a socketpair, one JSON line each way: the bridge sends
``{"ready": true}`` once started; the daemon sends the snapshot
(``Router.snapshot``). End of file on it, from any side or after LIFETIME,
stops the bridge.

Design notes
------------
* It imports the standard library and ``proxy.routing`` only (no aiohttp,
  no uvloop): it routes as the router does (Host, then ``/_/APP/``), to the
  app's upstreams in turn, with the same X-Forwarded-* headers.
* It relays bytes, it does not parse bodies: the request head is rewritten
  (``Connection: close`` upstream, the router's headers), the body is copied
  as it comes (chunked stays chunked), and the response head gets
  ``Connection: close`` so that a keep-alive client opens its next request
  on a new connection (the new image's, by then). A WebSocket upgrade is
  relayed both ways until either side closes.
* Stopping: the listeners' readers are removed first, then every task is
  waited for, and only then are the servers closed. A connection that
  asyncio has accepted but not yet wrapped in a transport would otherwise
  meet a closed server (its ``_attach`` asserts) and be left unanswered,
  to be reset when the bridge exits; and asyncio.run would cancel the
  handlers not yet started.
* What it cannot route as the router would (a static file, the ``/_/APP``
  redirect, an app with no upstream, no upstream answering, a malformed
  head), it answers 503 with Retry-After: 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pikud.proxy.routing import (
    Target,
    forwarded,
    match_static,
    parse_address,
    prefixed_location,
    resolve,
)

log = logging.getLogger("pikud")

HEAD_LIMIT = 65536          # bytes of a request or response head
HEAD_TIMEOUT = 10.0         # seconds a client has to send its request head
CONNECT_TIMEOUT = 5.0
FINISH_TIMEOUT = 10.0       # seconds its connections have to finish once told to stop
LIFETIME = 60.0             # seconds at most (a new image that does not know the bridge)
CHUNK = 65536
DROPPED = frozenset({"connection", "keep-alive", "proxy-connection", "x-forwarded-for",
                     "x-forwarded-proto", "x-forwarded-host", "x-forwarded-port",
                     "x-forwarded-prefix", "x-request-start"})


@dataclass
class Snapshot:
    """The router's table at the instant it stopped accepting (``Router.snapshot``)."""

    hosts: dict[str, str]
    upstreams: dict[str, list[str]]
    static: dict[str, list[str]]
    port: int
    turns: dict[str, count[int]] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Snapshot:
        return cls(data["hosts"], data["upstreams"], data["static"], data["port"])

    def upstreams_of(self, app: str) -> list[str]:
        """The app's upstreams, starting from the next in turn."""
        ups = self.upstreams.get(app, [])
        if not ups:
            return []
        first = next(self.turns.setdefault(app, count()))
        return [ups[(first + i) % len(ups)] for i in range(len(ups))]


@dataclass(frozen=True)
class Head:
    """A request head: its three words and its headers (name, value), as sent."""

    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, head: bytes) -> Head:
        """ValueError for anything but ``METHOD TARGET VERSION`` and ``Name: value`` lines."""
        first, *lines = head.decode("latin-1").split("\r\n")
        method, target, version = first.split(" ")
        headers = []
        for line in lines:
            if line:
                name, colon, value = line.partition(":")
                if not colon:
                    raise ValueError(f"not a header line: {line!r}")
                headers.append((name.strip(), value.strip()))
        return cls(method, target, version, headers)

    def get(self, name: str) -> str:
        return next((v for k, v in self.headers if k.lower() == name), "")

    def upstream(self, target: Target, peer: str, port: int) -> bytes:
        """The head to send upstream: the routed path, the router's headers, no keep-alive."""
        out = [f"{self.method} {target.path} {self.version}"]
        out += [f"{k}: {v}" for k, v in self.headers if k.lower() not in DROPPED]
        out += [f"{k}: {v}" for k, v in forwarded(peer, "http", self.get("host"), port,
                                                   target.prefix)]
        out.append("Connection: Upgrade" if self.get("upgrade") else "Connection: close")
        return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


def response_head(head: bytes, prefix: str) -> bytes:
    """The upstream's head for the client: ``Connection: close`` (unless 101), and an
    absolute Location given the prefix back, as the router does."""
    lines = head.decode("latin-1").split("\r\n")
    switching = lines[0].split(" ", 2)[1:2] == ["101"]
    out = [lines[0]]
    for line in lines[1:]:
        if not line:
            continue
        key, _, value = line.partition(":")
        name, value = key.strip().lower(), value.strip()
        if name in ("connection", "keep-alive") and not switching:
            continue
        if name == "location" and (moved := prefixed_location(value, prefix)) != value:
            line = f"{key}: {moved}"
        out.append(line)
    if not switching:
        out.append("Connection: close")
    return ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")


def unavailable(why: str) -> bytes:
    body = f"503 {why}\n".encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


async def connect(upstream: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """``127.0.0.1:PORT`` or ``unix:/abs/path.sock``; OSError or TimeoutError if it cannot."""
    async with asyncio.timeout(CONNECT_TIMEOUT):
        if upstream.startswith("unix:"):
            return await asyncio.open_unix_connection(upstream[len("unix:"):],
                                                      limit=HEAD_LIMIT)
        return await asyncio.open_connection(*parse_address(upstream), limit=HEAD_LIMIT)


async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Until ``reader`` ends, then half-close ``writer``."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


class Bridge:
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot
        self.handled = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._relay(reader, writer)
        except (OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError):
            pass            # the client or the upstream went away, or sent no HTTP
        finally:
            writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(HEAD_TIMEOUT):
            head = await reader.readuntil(b"\r\n\r\n")
        self.handled += 1
        try:
            request = Head.parse(head)
        except ValueError:
            writer.write(unavailable("the bridge could not read the request head"))
            return
        snap = self.snapshot
        target = resolve(snap.hosts, snap.upstreams, request.get("host"), request.target)
        static = [(url, Path(url)) for url in snap.static.get(getattr(target, "app", ""), [])]
        if not isinstance(target, Target) or match_static(
                static, unquote(target.path.partition("?")[0])) is not None:
            writer.write(unavailable("pikud is restarting; try again"))
            return
        peer = writer.get_extra_info("peername")
        out = request.upstream(target, peer[0] if peer else "", snap.port)
        for upstream in snap.upstreams_of(target.app):
            try:
                up_reader, up_writer = await connect(upstream)
            except (OSError, TimeoutError):
                continue
            try:
                up_writer.write(out)
                sending = asyncio.create_task(copy(reader, up_writer))
                try:
                    writer.write(response_head(await up_reader.readuntil(b"\r\n\r\n"),
                                               target.prefix))
                    await copy(up_reader, writer)
                finally:
                    sending.cancel()
            finally:
                up_writer.close()
            return
        writer.write(unavailable(f"no web process of app {target.app!r} answered"))


async def serve(channel: socket.socket, listeners: Iterable[socket.socket]) -> None:
    """Say ready, take the snapshot, accept until the channel ends, finish, return."""
    loop = asyncio.get_running_loop()
    channel.setblocking(False)
    await loop.sock_sendall(channel, json.dumps({"ready": True}).encode() + b"\n")
    line = b""
    while not line.endswith(b"\n"):        # the daemon holds the channel until it execs
        data = await loop.sock_recv(channel, CHUNK)
        if not data:
            return          # the re-exec did not happen
        line += data
    bridge = Bridge(Snapshot.from_json(json.loads(line)))
    servers = [await asyncio.start_server(bridge.handle, sock=sock, limit=HEAD_LIMIT)
               for sock in listeners]
    log.info("re-exec bridge: serving %d apps on port %d while pikud restarts",
             len(bridge.snapshot.upstreams), bridge.snapshot.port)
    try:
        async with asyncio.timeout(LIFETIME):
            while await loop.sock_recv(channel, CHUNK):
                pass
    except TimeoutError:
        log.warning("re-exec bridge: still serving after %gs; stopping", LIFETIME)
    for server in servers:          # accept no more; the accepted ones become connections
        for sock in server.sockets:
            loop.remove_reader(sock.fileno())
    await finish()
    for server in servers:
        server.close()
    log.info("re-exec bridge: stopped after %d requests", bridge.handled)


async def finish() -> None:
    """Wait (at most FINISH_TIMEOUT) for every connection, also those accepted but not
    handed to ``Bridge.handle`` yet (see the design notes)."""
    me = asyncio.current_task()
    try:
        async with asyncio.timeout(FINISH_TIMEOUT):
            while others := asyncio.all_tasks() - {me}:
                await asyncio.wait(others)
    except TimeoutError:
        log.warning("re-exec bridge: %d connections cut after %gs",
                    len(asyncio.all_tasks()) - 1, FINISH_TIMEOUT)


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    channel, *listeners = (socket.socket(fileno=int(fd)) for fd in argv)
    asyncio.run(serve(channel, listeners))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
