"""The embedded router with real sockets: backends on loopback ports, unix sockets and in children.

Backends are small aiohttp apps started by fixtures, in this process (to
observe what they receive) or as child processes (to stop one for real); every
fixture stops what it started and every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import FrameType

import aiohttp
import pytest
import uvloop
from aiohttp import web
from yarl import URL

from pikud.errors import PikudError
from pikud.proxy.router import Router
from pikud.proxy.routing import Route
from tests.net import free_port

DEADLINE = 20.0


class Backend:
    """An aiohttp app in this process that says who it is and what it received."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.upstream = ""
        self.runner: web.AppRunner | None = None
        self.first_chunk = asyncio.Event()      # the gates prove streaming both ways
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_post("/upload-gate", self.upload_gate)
        app.router.add_get("/download-gate", self.download_gate)
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_route("*", "/{tail:.*}", self.whoami)
        return app

    async def whoami(self, request: web.Request) -> web.Response:
        body = await request.read()
        response = web.json_response({
            "name": self.name, "method": request.method, "path": request.raw_path,
            "headers": [list(item) for item in request.headers.items()], "body": body.decode()})
        response.headers["Keep-Alive"] = "timeout=5"
        response.headers["X-Backend"] = self.name
        response.headers.add("Set-Cookie", "a=1")
        response.headers.add("Set-Cookie", "b=2")
        return response

    async def echo(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in request.content.iter_any():
            await response.write(chunk)
        await response.write_eof()
        return response

    async def upload_gate(self, request: web.Request) -> web.Response:
        total = len(await request.content.readany())
        self.first_chunk.set()
        total += len(await request.read())
        return web.Response(text=str(total))

    async def download_gate(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        await self.release.wait()
        await response.write(b"second")
        await response.write_eof()
        return response

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data[::-1])
        return ws

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("to", "/login"))


@pytest.fixture
def sock_dir(short_root: Path) -> Path:
    """A folder short enough for unix socket paths (the shared short_root)."""
    return short_root


@pytest.fixture
async def backend(sock_dir: Path) -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    started: list[Backend] = []

    async def start(name: str, unix: bool = False) -> Backend:
        b = Backend(name)
        b.runner = web.AppRunner(b.app(), handle_signals=False, access_log=None)
        await b.runner.setup()
        if unix:
            path = sock_dir / f"{name}.sock"
            await web.UnixSite(b.runner, str(path)).start()
            b.upstream = f"unix:{path}"
        else:
            site = web.TCPSite(b.runner, "127.0.0.1", 0)
            await site.start()
            b.upstream = f"127.0.0.1:{b.runner.addresses[0][1]}"
        started.append(b)
        return b

    yield start
    for b in started:
        b.release.set()
        if b.runner is not None:
            await b.runner.cleanup()


@pytest.fixture
async def router() -> AsyncIterator[Router]:
    r = Router("127.0.0.1", 0)
    await r.start()
    try:
        yield r
    finally:
        async with asyncio.timeout(DEADLINE):
            await r.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=DEADLINE)) as session:
        yield session


def url(router: Router, path: str) -> str:
    return f"http://127.0.0.1:{router.address[1]}{path}"


async def get_json(client: aiohttp.ClientSession, address: str | URL, **kw: object) -> dict:
    async with client.get(address, **kw) as response:  # type: ignore[arg-type]
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def raw_request(router: Router, head: str) -> tuple[int, bytes]:
    """Send ``head`` as it is (no client normalizes the path) and read the whole answer."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection(*router.address)
        writer.write(head.encode() + b"\r\n\r\n")
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


# --- routing ----------------------------------------------------------------
async def test_routes_by_host_and_by_prefix(router: Router, backend, client) -> None:
    shop, blog = await backend("shop"), await backend("blog", unix=True)
    router.set_route(Route("shop", ("shop.example.com",), (shop.upstream,)))
    router.set_route(Route("blog", (), (blog.upstream,)))
    async with asyncio.timeout(DEADLINE):
        for host, name in [("Shop.Example.COM:8080", "shop"), ("shop", "shop"),
                           ("shop.localhost", "shop"), ("blog.localhost:1", "blog")]:
            got = await get_json(client, url(router, "/a/b?x=1"), headers={"Host": host})
            assert (got["name"], got["path"]) == (name, "/a/b?x=1")
        raw = URL(url(router, "/_/blog/p%20q/%7E?r=%2F&s=a+b"), encoded=True)
        got = await get_json(client, raw)                         # passed on as it was sent
        assert (got["name"], got["path"]) == ("blog", "/p%20q/%7E?r=%2F&s=a+b")
        assert dict(got["headers"])["X-Forwarded-Prefix"] == "/_/blog"
        async with client.get(url(router, "/_/blog?x=1"), allow_redirects=False) as response:
            assert response.status == 308 and response.headers["Location"] == "/_/blog/?x=1"
        got = await get_json(client, url(router, "/_/blog"))        # followed
        assert (got["name"], got["path"]) == ("blog", "/")
        async with client.get(url(router, "/_/blog/redirect"), allow_redirects=False) as resp:
            assert resp.headers["Location"] == "/_/blog/login"       # the prefix given back
        async with client.get(url(router, "/_/blog/redirect?to=/_/blog/x"),
                              allow_redirects=False) as resp:
            assert resp.headers["Location"] == "/_/blog/x"           # not twice
        async with client.get(url(router, "/redirect"), headers={"Host": "shop"},
                              allow_redirects=False) as resp:
            assert resp.headers["Location"] == "/login"               # by Host: untouched


async def test_unknown_app_is_a_plain_404(router: Router, backend, client) -> None:
    shop = await backend("shop")
    router.set_route(Route("shop", (), (shop.upstream,)))
    async with asyncio.timeout(DEADLINE):
        for path, host in [("/", "ghost.example.com"), ("/_/ghost/x", "127.0.0.1")]:
            async with client.get(url(router, path), headers={"Host": host}) as response:
                assert response.status == 404
                assert response.content_type == "text/plain"
                text = await response.text()
                assert "ghost" in text and len(text) < 200
        status, body = await raw_request(router, "GET / HTTP/1.0")         # no Host at all
        assert status == 404 and b"no app" in body
        router.remove("shop")
        async with client.get(url(router, "/"), headers={"Host": "shop"}) as response:
            assert response.status == 404


async def test_forwarded_and_hop_by_hop_headers(router: Router, backend, client) -> None:
    shop = await backend("shop")
    router.set_route(Route("shop", ("shop.example.com",), (shop.upstream,)))
    headers = {"Host": "Shop.Example.com:1234", "Connection": "keep-alive, X-Secret",
               "X-Secret": "s", "Keep-Alive": "300", "Proxy-Authorization": "p", "TE": "trailers",
               "X-Forwarded-For": "6.6.6.6", "X-Forwarded-Prefix": "/fake", "X-Custom": "c",
               "Cookie": "session=1"}
    async with asyncio.timeout(DEADLINE):
        async with client.post(url(router, "/h"), headers=headers, data=b"hello") as response:
            assert response.status == 200
            got = await response.json()
            assert response.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            assert response.headers["X-Backend"] == "shop"
            assert "Keep-Alive" not in response.headers
    sent = {k.lower(): v for k, v in got["headers"]}
    assert got["method"] == "POST" and got["body"] == "hello"
    for name in ("x-secret", "keep-alive", "proxy-authorization", "te", "x-forwarded-prefix"):
        assert name not in sent, name
    assert sent["host"] == "Shop.Example.com:1234"
    assert (sent["x-custom"], sent["cookie"]) == ("c", "session=1")
    assert sent["x-forwarded-for"] == "127.0.0.1"
    assert sent["x-forwarded-proto"] == "http"
    assert sent["x-forwarded-host"] == "shop.example.com"
    assert sent["x-forwarded-port"] == str(router.address[1])
    assert abs(float(sent["x-request-start"]) - time.time()) < 10
    assert "user-agent" in sent and "aiohttp" in sent["user-agent"]  # the client's, passed on
    async with asyncio.timeout(DEADLINE):
        async with client.head(url(router, "/h"), headers={"Host": "shop"}) as response:
            assert response.status == 200 and response.headers["X-Backend"] == "shop"
            assert await response.read() == b""


# --- upstreams ----------------------------------------------------------------
async def test_round_robin_across_two_upstreams(router: Router, backend, client) -> None:
    a, b = await backend("a"), await backend("b", unix=True)
    router.set_route(Route("app", (), (a.upstream, b.upstream)))
    async with asyncio.timeout(DEADLINE):
        names = [(await get_json(client, url(router, "/_/app/")))["name"] for _ in range(6)]
    assert names == ["a", "b"] * 3


async def test_a_dead_upstream_costs_nothing(router: Router, backend, client,
                                             sock_dir: Path) -> None:
    alive = await backend("alive")
    dead = (f"127.0.0.1:{free_port()}", f"unix:{sock_dir}/gone.sock")
    router.set_route(Route("app", (), (*dead, alive.upstream)))
    async with asyncio.timeout(DEADLINE):
        for _ in range(6):
            async with client.post(url(router, "/_/app/"), data=b"x" * 100_000) as response:
                assert response.status == 200
                assert (await response.json())["body"] == "x" * 100_000
        router.set_route(Route("app", (), dead))
        async with client.get(url(router, "/_/app/")) as response:
            assert response.status == 502 and "app" in await response.text()
        router.set_route(Route("app", (), ()))
        async with client.get(url(router, "/_/app/")) as response:
            assert response.status == 503 and "no running web process" in await response.text()


async def test_a_large_body_streams_both_ways(router: Router, backend, client) -> None:
    echo = await backend("echo", unix=True)
    router.set_route(Route("app", (), (echo.upstream,)))
    chunk = os.urandom(1 << 16)
    count = 320                                      # 20 MiB

    async def body() -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    sent = hashlib.sha256(chunk * count).hexdigest()
    received, size = hashlib.sha256(), 0
    async with asyncio.timeout(DEADLINE):
        async with client.post(url(router, "/_/app/echo"), data=body()) as response:
            assert response.status == 200
            async for piece in response.content.iter_any():
                received.update(piece)
                size += len(piece)
    assert (size, received.hexdigest()) == (len(chunk) * count, sent)


async def test_bodies_are_not_buffered(router: Router, backend, client) -> None:
    gate = await backend("gate")
    router.set_route(Route("app", (), (gate.upstream,)))

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * 1000
        await gate.first_chunk.wait()        # the backend saw the start before the end was sent
        yield b"y" * 1000

    async with asyncio.timeout(5):
        async with client.post(url(router, "/_/app/upload-gate"), data=body()) as response:
            assert await response.text() == "2000"
        async with client.get(url(router, "/_/app/download-gate")) as response:
            assert await response.content.readexactly(6) == b"first;"
            gate.release.set()               # the client saw the start before the end was made
            assert await response.content.read() == b"second"


# --- static -------------------------------------------------------------------
async def test_static_files_and_traversal(router: Router, client, tmp_path: Path) -> None:
    folder = tmp_path / "public"
    (folder / "docs").mkdir(parents=True)
    (folder / "app.css").write_text("body {}")
    (folder / "docs" / "index.html").write_text("<h1>docs</h1>")
    (folder / "empty").mkdir()
    (tmp_path / "secret.txt").write_text("TOPSECRET")
    router.set_route(Route("site", ("site.test",), (), static=(("/static", folder),)))
    async with asyncio.timeout(DEADLINE):
        async with client.get(url(router, "/_/site/static/app.css")) as response:
            assert response.status == 200 and await response.text() == "body {}"
            assert response.content_type == "text/css"
        async with client.get(url(router, "/static/docs/"), headers={"Host": "site.test"}) as r:
            assert r.status == 200 and await r.text() == "<h1>docs</h1>"
        async with client.get(url(router, "/_/site/static/docs?v=1"), allow_redirects=False) as r:
            assert r.status == 301 and r.headers["Location"] == "/_/site/static/docs/?v=1"
        for path in ("/static/missing.css", "/static/empty/", "/static/", "/static/" + "n" * 300,
                     "/static/app.css/x", "/static/a%00b"):
            async with client.get(url(router, "/_/site" + path)) as response:
                assert response.status == 404, path
        async with client.post(url(router, "/_/site/static/app.css")) as response:
            assert response.status == 405
        async with client.get(url(router, "/_/site/other")) as response:
            assert response.status == 503                  # no web process behind the folders
        for target in ("/_/site/static/../secret.txt", "/_/site/static/%2e%2e/secret.txt",
                       "/_/site/static/..%2Fsecret.txt", "/_/site/static/../../etc/passwd"):
            status, body = await raw_request(router, f"GET {target} HTTP/1.0\r\nHost: x")
            assert status == 404 and b"TOPSECRET" not in body and b"root:" not in body, target


async def test_static_files_never_leave_the_folder_through_a_symlink(
        router: Router, client, tmp_path: Path) -> None:
    release = tmp_path / "release"
    (release / "dist").mkdir(parents=True)
    (release / "dist" / "ok.txt").write_text("ok")
    (release / "dist" / "passwd").symlink_to("/etc/passwd")     # committed to git
    (release / "dist" / "sub").symlink_to("/etc")
    (release / "dist" / "same.txt").symlink_to("ok.txt")
    (release / "etc").symlink_to("/etc")                        # a folder that is a link
    router.set_route(Route("site", (), (), static=(("/d", release / "dist"),
                                                   ("/pub", release / "etc"))))
    async with asyncio.timeout(DEADLINE):
        async with client.get(url(router, "/_/site/d/ok.txt")) as response:
            assert response.status == 200 and await response.text() == "ok"
        for path in ("/d/passwd", "/d/sub/passwd", "/d/sub/", "/d/same.txt", "/pub/passwd",
                     "/pub/", "/pub/hostname"):
            async with client.get(url(router, "/_/site" + path)) as response:
                body = await response.text()
                assert response.status == 404 and "root:" not in body, path


# --- generations ----------------------------------------------------------------
CHILD = """
import asyncio, socket, sys
from aiohttp import web
from yarl import URL
name, where = sys.argv[1], sys.argv[2]
async def hello(request):
    await asyncio.sleep(0.02)
    return web.Response(text=name)
app = web.Application()
app.router.add_get("/{tail:.*}", hello)
if where == "tcp":
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{sock.getsockname()[1]}"
else:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(where)
    address = f"unix:{where}"
sock.listen(128)
print(address, flush=True)
web.run_app(app, sock=sock, print=None, shutdown_timeout=5)
"""


@pytest.fixture
async def child_backend(sock_dir: Path) -> AsyncIterator[Callable[..., Awaitable[tuple]]]:
    """Start a backend in a child process; returns (process, upstream)."""
    children: list[asyncio.subprocess.Process] = []

    async def start(name: str, unix: bool = False) -> tuple[asyncio.subprocess.Process, str]:
        where = str(sock_dir / f"{name}.sock") if unix else "tcp"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, name, where, stdout=asyncio.subprocess.PIPE)
        children.append(proc)
        assert proc.stdout is not None
        async with asyncio.timeout(DEADLINE):
            line = await proc.stdout.readline()
        assert line, f"backend {name} exited with {await proc.wait()}"
        return proc, line.decode().strip()

    yield start
    for proc in children:
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        async with asyncio.timeout(DEADLINE):
            await proc.wait()


async def test_switching_generations_loses_no_request(router: Router, child_backend,
                                                      client) -> None:
    old, old_upstream = await child_backend("A")
    new, new_upstream = await child_backend("B", unix=True)
    router.set_route(Route("app", ("app.test",), (old_upstream,)))
    total, switch_at, interval, grace = 300, 150, 0.01, 0.3
    results: dict[int, tuple[int, str]] = {}

    async def one(i: int) -> None:
        try:
            async with client.get(url(router, f"/r/{i}"), headers={"Host": "app.test"}) as resp:
                results[i] = (resp.status, await resp.text())
        except aiohttp.ClientError as exc:
            results[i] = (0, repr(exc))

    async def stop_old_after_grace() -> None:
        await asyncio.sleep(grace)
        old.send_signal(signal.SIGTERM)
        assert await old.wait() == 0

    async with asyncio.timeout(DEADLINE), asyncio.TaskGroup() as tasks:
        start = time.monotonic()
        for i in range(total):
            if i == switch_at:
                router.set_route(Route("app", ("app.test",), (new_upstream,)))
                tasks.create_task(stop_old_after_grace())
            tasks.create_task(one(i))
            await asyncio.sleep(max(0.0, start + (i + 1) * interval - time.monotonic()))
    assert old.returncode == 0 and new.returncode is None
    failed = {i: r for i, r in results.items() if r[0] != 200}
    assert len(results) == total and not failed, failed
    names = [results[i][1] for i in range(total)]
    assert names[0] == "A" and names.count("A") > switch_at // 2
    assert set(names[switch_at:]) == {"B"}


# --- websocket and lifetime -------------------------------------------------------
async def test_websocket_through_the_router(router: Router, backend, client) -> None:
    tcp, unix = await backend("tcp"), await backend("unix", unix=True)
    async with asyncio.timeout(DEADLINE):
        for b in (tcp, unix):
            router.set_route(Route("app", (), (f"127.0.0.1:{free_port()}", b.upstream)))
            async with client.ws_connect(url(router, "/_/app/ws"), protocols=("x", "chat")) as ws:
                assert ws.protocol == "chat"
                await ws.send_str("hello")
                assert await ws.receive_str() == f"{b.name}:hello"
                await ws.send_bytes(b"abc")
                assert await ws.receive_bytes() == b"cba"
                await ws.close()
            assert ws.close_code == aiohttp.WSCloseCode.OK
        async with client.get(url(router, "/_/app/echo"),
                              headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                       "Sec-WebSocket-Version": "13",
                                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}) as resp:
            assert resp.status == 502                        # that path is no WebSocket
        async with client.ws_connect(url(router, "/_/app/ws")) as ws:
            await ws.send_str("still there?")
            assert await ws.receive_str() == "unix:still there?"
            started = time.monotonic()
            await router.stop()                              # open WebSockets do not hold it up
            assert time.monotonic() - started < 2
            msg = await ws.receive()
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, aiohttp.WSCloseCode.GOING_AWAY)


async def test_the_address_is_checked_at_start(router: Router) -> None:
    host, port = router.address
    taken = Router(host, port)
    with pytest.raises(PikudError, match=f"cannot serve HTTP on 127.0.0.1:{port}: .*in use"):
        await taken.start()
    await taken.stop()                                        # harmless when never started


@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop],
                         ids=["asyncio", "uvloop"])
def test_starting_on_a_shared_listener_never_makes_it_blocking(
        loop_factory: Callable[[], asyncio.AbstractEventLoop]) -> None:
    """The re-exec bridge accepts on the listener while the new image starts its router on
    it: were the open file they share blocking for an instant, an accept of the bridge's
    would sleep until the next connection, with one it had accepted unanswered. A probe
    reads the file's flags at every call and return while the router starts, stops
    accepting for a re-exec that is then refused, accepts again and stops."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    blocking_after: list[str] = []

    def probe(frame: FrameType, event: str, arg: object) -> None:
        if not fcntl.fcntl(listener.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK:
            blocking_after.append(f"{event} {getattr(arg, '__qualname__', '')} in "
                                  f"{frame.f_code.co_qualname}")

    async def start_and_stop() -> None:
        router = Router("127.0.0.1", 0)
        sys.setprofile(probe)
        try:
            await router.start([socket.socket(fileno=os.dup(listener.fileno()))])
            await router.drain(1)           # a refused re-exec: it stops accepting, then
            router.resume()                 # accepts again on a new duplicate
            assert (await raw_request(router, "GET / HTTP/1.0\r\nHost: x"))[0] == 404
            await router.stop()
        finally:
            sys.setprofile(None)
    with listener, asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.wait_for(start_and_stop(), DEADLINE))
    assert not blocking_after, blocking_after[:3]


async def test_unix_sessions_are_closed_when_no_route_names_them(router: Router, backend,
                                                                 client) -> None:
    a, b = await backend("a", unix=True), await backend("b", unix=True)
    router.set_route(Route("app", (), (a.upstream,)))
    async with asyncio.timeout(DEADLINE):
        async with client.get(url(router, "/_/app/download-gate")) as response:
            assert await response.content.readexactly(6) == b"first;"
            router.set_route(Route("app", (), (b.upstream,)))    # while a request is in flight
            a.release.set()
            assert await response.content.read() == b"second"
        assert json.loads(await (await client.get(url(router, "/_/app/"))).text())["name"] == "b"
    assert set(router._unix) == {b.upstream[len("unix:"):]}
