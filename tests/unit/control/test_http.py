"""The control socket's HTTP server (control/http.py) on a real unix socket, with a small
route table: keep-alive, HEAD, 100-continue, limits, a client that leaves, drain."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pikud.control.http import MAX_HEAD, MAX_LINKS, HttpServer
from pikud.control.protocol import MAX_BODY, error, ok
from pikud.control.request import Reply, Request, Route, RouteTable, Stream, Values
from pikud.errors import PikudError

DEADLINE = 5.0


class Handlers:
    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def held(self, request: Request) -> Any:
        self.entered.set()
        await self.release.wait()
        return {"held": True}

    async def echo(self, request: Request) -> Any:
        return {"path": request.path, "query": request.query, "match": request.match_info,
                "body": (await request.read()).decode(), "key": request.headers.get("x-piku-key")}

    async def forever(self, request: Request) -> Any:
        self.entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled.set()
            raise

    async def lines(self, request: Request) -> Stream:
        response = Stream("application/x-ndjson")
        await response.prepare(request)
        for n in range(3):
            await response.write(b'{"n": %d}\n' % n)
        return response


async def respond(request: Request) -> Reply | Stream:
    """The control server's envelope, without the guard."""
    try:
        result = await request.handler(request)
    except PikudError as exc:
        return Reply(exc.status, error(exc.code, str(exc)))
    return result if isinstance(result, Stream) else Reply(200, ok(result))


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Path, HttpServer, Handlers]]:
    async with serving(tmp_path) as ready:
        yield ready


async def accepting(server: HttpServer, tmp_path: Path) -> Path:
    """``server`` accepting on a real unix socket in ``tmp_path``; its path."""
    path = tmp_path / "s.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.listen()
    await server.accept(sock)
    return path


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, max_links: int = MAX_LINKS,
                  ) -> AsyncIterator[tuple[Path, HttpServer, Handlers]]:
    handlers = Handlers()
    table = RouteTable([Route("GET", "/echo/{name}", handlers.echo),
                        Route("POST", "/echo/{name}", handlers.echo),
                        Route("GET", "/forever", handlers.forever),
                        Route("GET", "/held", handlers.held),
                        Route("GET", "/lines", handlers.lines)])
    server = HttpServer(table, Values(), respond, idle_timeout=DEADLINE, max_links=max_links)
    path = await accepting(server, tmp_path)
    try:
        yield path, server, handlers
    finally:
        await server.drain(0.1)


async def exchange(path: Path, data: bytes) -> bytes:
    """Send ``data``, read until the server closes the connection."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(data)
        async with asyncio.timeout(DEADLINE):
            return await reader.read(-1)
    finally:
        writer.close()


def get(target: str, *headers: str) -> bytes:
    return ("\r\n".join([f"GET {target} HTTP/1.1", "Host: pikud", *headers]) + "\r\n\r\n").encode()


def bodies(answer: bytes) -> list[Any]:
    """The JSON bodies of the answers in ``answer`` (Content-Length framed)."""
    found = []
    while answer:
        head, _, rest = answer.partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        found.append(json.loads(rest[:length]))
        answer = rest[length:]
    return found


async def test_two_requests_on_one_connection_then_close(served: Any) -> None:
    path, _, _ = served
    answer = await exchange(path, get("/echo/a%2Fb?x=1&x=2&y", "X-Piku-Key: k")
                            + get("/echo/c", "Connection: close"))
    first, second = bodies(answer)
    assert first["data"] == {"path": "/echo/a/b", "query": {"x": "1", "y": ""},
                             "match": {"name": "a/b"}, "body": "", "key": "k"}
    assert second["data"]["match"] == {"name": "c"}
    assert answer.count(b"HTTP/1.1 200 OK") == 2


async def test_a_connection_waits_for_the_next_request_after_an_answer(served: Any) -> None:
    path, _, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        async with asyncio.timeout(DEADLINE):
            for name in ("a", "b"):
                writer.write(get(f"/echo/{name}"))
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                body = json.loads(await reader.readexactly(length))
                assert body["data"]["match"] == {"name": name}
    finally:
        writer.close()


async def test_head_is_answered_without_a_body(served: Any) -> None:
    path, _, _ = served
    answer = await exchange(path, b"HEAD /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK") and b"content-length: " in head.lower()
    assert rest == b""


async def test_a_client_that_expects_100_continue_gets_it(served: Any) -> None:
    path, _, _ = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(b"POST /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Expect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        async with asyncio.timeout(DEADLINE):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 100 ")
            writer.write(b"hello")
            answer = await reader.read(-1)
    finally:
        writer.close()
    assert bodies(answer)[0]["data"]["body"] == "hello"


async def test_a_body_over_the_limit_is_413_and_the_answer_arrives_whole(served: Any) -> None:
    path, _, _ = served
    size = MAX_BODY * 3
    answer = await exchange(path, b"POST /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                            b"Content-Length: %d\r\n\r\n" % size + b"x" * size)
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert bodies(answer)[0]["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("request_bytes, status", [
    (b"\x00\xff garbage \r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20_000, 431),      # a head without end
    (get("/nowhere", "Connection: close"), 404),
    (get("/echo/", "Connection: close"), 404),
    (b"DELETE /echo/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405),
])
async def test_what_no_route_takes_gets_an_envelope(served: Any, request_bytes: bytes,
                                                   status: int) -> None:
    path, _, _ = served
    answer = await exchange(path, request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert bodies(answer)[0]["ok"] is False


async def test_a_stream_is_chunked(served: Any) -> None:
    path, _, _ = served
    answer = await exchange(path, get("/lines", "Connection: close"))
    assert b"transfer-encoding: chunked" in answer.lower()
    assert answer.count(b'{"n": ') == 3 and answer.endswith(b"0\r\n\r\n")


@pytest.mark.parametrize("end", ["the client leaves", "drain's time is up"])
async def test_a_handler_still_going_is_cancelled_when(served: Any, end: str) -> None:
    path, server, handlers = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(get("/forever"))
    async with asyncio.timeout(DEADLINE):
        await handlers.entered.wait()
        if end == "the client leaves":
            writer.close()
        else:
            await server.drain(0.1)
            assert await reader.read(-1) == b""
        await handlers.cancelled.wait()
    writer.close()


async def test_drain_closes_idle_connections_and_answers_busy_ones(served: Any) -> None:
    path, server, handlers = served
    idle_reader, idle_writer = await asyncio.open_unix_connection(str(path))
    busy_reader, busy_writer = await asyncio.open_unix_connection(str(path))
    busy_writer.write(get("/held"))
    async with asyncio.timeout(DEADLINE):
        await handlers.entered.wait()
        draining = asyncio.ensure_future(server.drain(DEADLINE))
        assert await idle_reader.read(-1) == b""
        handlers.release.set()
        answer = await busy_reader.read(-1)         # answered, then closed
        await draining
    assert b"connection: close" in answer.lower() and bodies(answer)[0]["data"] == {"held": True}
    for writer in (idle_writer, busy_writer):
        writer.close()



async def test_connections_over_the_cap_are_closed_at_once_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An app process opening connections by the thousand must not take pikud's
    descriptors: past the cap a new one is closed, and the warning is not repeated."""
    async with serving(tmp_path, max_links=2) as (path, _, _):
        held = [await asyncio.open_unix_connection(str(path)) for _ in range(2)]
        async with asyncio.timeout(DEADLINE):
            for reader, writer in held:             # both open and served
                writer.write(get("/echo/x"))
                assert bodies(await reader.readuntil(b"}}"))[0]["data"]["match"] == {
                    "name": "x"}
            with caplog.at_level(logging.WARNING, "pikud.control.http"):
                for _ in range(3):          # closed at once, not after the idle timeout
                    reader, writer = await asyncio.open_unix_connection(str(path))
                    assert await reader.read(-1) == b""
                    writer.close()
            reader, writer = held.pop()
            writer.write(get("/echo/z", "Connection: close"))
            assert b'"z"' in await reader.read(-1)  # answered and closed: one place is free
            writer.close()
            assert bodies(await exchange(path, get("/echo/w", "Connection: close")))[0]["ok"]
        [warning] = [r.getMessage() for r in caplog.records if "connections" in r.getMessage()]
        assert warning == "control connections: 2 open, closing new ones until one ends"
        for _, writer in held:
            writer.close()


async def test_what_follows_a_request_being_answered_is_read_up_to_a_head(
        served: Any) -> None:
    """A client that sends without end while its request is answered fills its socket, not
    pikud's memory."""
    path, server, handlers = served
    sock = socket.socket(socket.AF_UNIX)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, str(path))
        await loop.sock_sendall(sock, get("/held"))
        async with asyncio.timeout(DEADLINE):
            await handlers.entered.wait()
        with contextlib.suppress(TimeoutError):     # it never ends: nobody reads the rest
            async with asyncio.timeout(1.0):
                await loop.sock_sendall(sock, b"x" * (8 << 20))
        [link] = server._links.values()
        assert len(link.h11.trailing_data[0]) <= MAX_HEAD + 1
    finally:
        handlers.release.set()
        sock.close()
