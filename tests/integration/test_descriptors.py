"""Descriptors with a real daemon: its open-files limit, the router's timeouts, cap and reserve.

The daemon runs under an RLIMIT_NOFILE set in its child before the exec; the
clients are plain sockets of this test on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import os
import resource
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ..conftest import FAST, Pikud, nofile, wait_for
from .test_lifecycle import deploy_checked_app

HELD = 1000


@pytest.fixture
def many_files() -> Iterator[None]:
    """This test's own soft limit raised, for the connections it holds (restored after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < HELD + 100:
        pytest.skip(f"the hard open-files limit ({hard}) is too low to hold {HELD} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def closed_within(sock: socket.socket, started: float, deadline: float) -> float:
    """Seconds from ``started`` until the peer closed ``sock`` (what it sent is dropped)."""
    sock.settimeout(max(0.0, started + deadline - time.monotonic()))
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the connection was still open {deadline:g}s later")
    return time.monotonic() - started


def test_a_thousand_idle_connections_leave_room_for_requests_restarts_and_respawns(
        pikud_factory: Callable[..., Pikud], many_files: None) -> None:
    daemon = pikud_factory(preexec_fn=nofile(1024, 1024))
    assert "open files: limit 1024 (soft = hard)" in daemon.output()
    deploy_checked_app(daemon, "hold")
    wait_for(lambda: daemon.get("hold") == (200, "ok"), 15, "hold to answer")
    port = daemon.http_port
    held = []
    try:
        for _ in range(HELD):       # each one answered, then kept open by this side
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            conn.request("GET", "/", headers={"Host": "hold.localhost"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
            held.append(conn)

        assert daemon.get("hold") == (200, "ok")
        daemon.cli("restart", "hold", check=True)
        assert daemon.get("hold") == (200, "ok")
        pid = daemon.wait_state("hold", "hold:web.1", "RUNNING")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (p := daemon.process("hold", "hold:web.1"))["state"] == "RUNNING"
                 and p["pid"] not in (None, pid), 15, "hold:web.1 to respawn")
        # RUNNING comes after PIKU_START_SECS, maybe before the server listens
        wait_for(lambda: daemon.get("hold") == (200, "ok"), 15, "the respawned process to answer")
    finally:
        for conn in held:
            conn.close()
    output = daemon.output()
    assert "closed 32 idle keep-alive connections" in output
    assert "Too many open files" not in output and "spawn failed" not in output


GATE_SERVER = """\
import os, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

released = threading.Event()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        hold = self.path == "/hold"
        if self.path == "/release":
            released.set()
        self.send_response(200)
        self.send_header("Content-Length", "12" if hold else "2")
        self.end_headers()
        if hold:                        # half the answer now, the rest once released
            self.wfile.write(b"first;")
            self.wfile.flush()
            released.wait(30)
        self.wfile.write(b"second" if hold else b"ok")


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_at_the_cap_new_connections_wait_in_the_backlog_until_a_request_ends(
        pikud_factory: Callable[..., Pikud], short_root: Path, loop: str) -> None:
    (short_root / "pikud.toml").write_text("router_max_connections = 2\n")
    daemon = pikud_factory("--loop", loop)
    app = daemon.add_app("gate", "web: python3 gate.py\n", FAST)
    (app / "gate.py").write_text(GATE_SERVER)
    daemon.api("POST", "/apps/gate/deploy")
    wait_for(lambda: daemon.get("gate") == (200, "ok"), 15, "gate to answer")
    address = ("127.0.0.1", daemon.http_port)
    busy = http.client.HTTPConnection(*address, timeout=15)
    busy.request("GET", "/hold", headers={"Host": "gate.localhost"})
    answer = busy.getresponse()
    assert answer.read(6) == b"first;"                 # a request in flight
    silent = socket.create_connection(address, timeout=5)       # the second: the cap
    wait_for(lambda: "not accepting" in daemon.output(), 10, "the router to stop accepting")
    queued = socket.create_connection(address, timeout=5)       # waits in the backlog
    try:
        queued.sendall(b"GET / HTTP/1.1\r\nHost: gate.localhost\r\n\r\n")
        queued.settimeout(0.5)
        with pytest.raises(TimeoutError):
            queued.recv(4096)
        port = daemon.process("gate", "gate:web.1")["port"]
        release = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        release.request("GET", "/release")
        assert release.getresponse().read() == b"ok"
        release.close()
        assert answer.read() == b"second"              # the request in flight ends whole
        queued.settimeout(15)
        assert queued.recv(4096).startswith(b"HTTP/1.1 200 OK")
        assert silent.recv(4096) == b""                # idle: closed to make room
    finally:
        for sock in (silent, queued):
            sock.close()
        busy.close()
    assert "router: accepting connections again" in daemon.output()


def test_connections_that_send_no_request_are_closed(pikud_factory: Callable[..., Pikud],
                                                     short_root: Path) -> None:
    (short_root / "pikud.toml").write_text(
        "router_header_timeout = 0.5\nrouter_keepalive_timeout = 3\n"
        "control_idle_timeout = 0.5\n")
    daemon = pikud_factory(preexec_fn=nofile(512, 4096))
    assert "open files: soft limit raised from 512 to 4096" in daemon.output()
    address = ("127.0.0.1", daemon.http_port)

    def connect(sent: bytes) -> tuple[socket.socket, float]:
        sock = socket.create_connection(address, timeout=5)
        sock.sendall(sent)
        return sock, time.monotonic()

    silent = connect(b"")
    half = connect(b"GET / HTTP/1.1\r\nHost: nobody.localhost\r\n")
    answered = http.client.HTTPConnection(*address, timeout=5)
    answered.request("GET", "/", headers={"Host": "nobody.localhost"})
    assert answered.getresponse().read().startswith(b"404 no app")
    idle_since = time.monotonic()
    again = http.client.HTTPConnection(*address, timeout=5)
    again.request("GET", "/", headers={"Host": "nobody.localhost"})
    again.getresponse().read()
    assert again.sock is not None
    again.sock.sendall(b"GET / HT")                  # a second request, begun and not finished
    again_since = time.monotonic()
    control = socket.socket(socket.AF_UNIX)
    control.connect(str(daemon.root / "pikud.sock"))
    control_since = time.monotonic()
    try:
        assert closed_within(silent[0], silent[1], 2.5) > 0.4
        assert closed_within(half[0], half[1], 2.5) > 0.4
        assert closed_within(again.sock, again_since, 2.5) > 0.4
        assert closed_within(control, control_since, 2.5) > 0.4
        assert answered.sock is not None               # idle between requests: keep-alive
        assert closed_within(answered.sock, idle_since, 8) > 2.9
    finally:
        for sock in (silent[0], half[0], control):
            sock.close()
        answered.close()
        again.close()


def test_the_router_leaves_a_spawn_the_reserve_it_needs_however_many_processes_run(
        pikud_factory: Callable[..., Pikud], short_root: Path, many_files: None) -> None:
    """A spawn keeps one free descriptor per live process: the router must not take those."""
    (short_root / "pikud.toml").write_text("max_processes_per_app = 300\n")
    daemon = pikud_factory(preexec_fn=nofile(1024, 1024))
    daemon.add_app("many", "worker: sleep 600\n", FAST)
    (short_root / "envs/many").mkdir(parents=True)
    (short_root / "envs/many/SCALING").write_text("worker: 200\n")
    daemon.api("POST", "/apps/many/deploy")
    wait_for(lambda: all(p["state"] == "RUNNING" for p in daemon.processes("many")), 30,
             "200 workers to run")
    deploy_checked_app(daemon, "hold")
    port = daemon.http_port
    held = []
    try:
        while "not accepting" not in daemon.output() and len(held) < HELD:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
            conn.request("GET", "/", headers={"Host": "hold.localhost"})
            response = conn.getresponse()
            assert (response.status, response.read()) == (200, b"ok")
            held.append(conn)
        pid = daemon.process("many", "many:worker.1")["pid"]
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (p := daemon.process("many", "many:worker.1"))["state"] == "RUNNING"
                 and p["pid"] not in (None, pid), 15, "many:worker.1 to respawn")
        daemon.cli("restart", "hold", check=True)
        assert daemon.get("hold") == (200, "ok")
    finally:
        for conn in held:
            conn.close()
    assert "Too many open files" not in daemon.output()
