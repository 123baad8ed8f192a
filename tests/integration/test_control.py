"""The control socket and the CLI against a real daemon."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys

import pytest

from tests.conftest import FAST, Pikud, json_out


def raw_request(path: str, request: bytes) -> tuple[int, dict]:
    """Send bytes as they are and parse the one response (status, JSON body)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(path)
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post(target: str, body: bytes) -> bytes:
    head = (f"POST {target} HTTP/1.1\r\nHost: pikud\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@pytest.mark.parametrize("request_bytes, status, code", [
    (post("/apps/a/scale", b"{not json"), 400, "bad_request"),
    (post("/apps/a/scale", b"[1, 2]"), 400, "bad_request"),
    (post("/apps/a/scale", b'{"scaling": {"worker": -1}}'), 400, "invalid_spec"),
    (post("/apps/a/scale", b'{"scaling": {"nope": 2}}'), 400, "invalid_spec"),
    (post("/apps/a/scale", b'{"scaling": "lots"}'), 400, "bad_request"),
    (post("/apps/a/config", b'{"set": {"BAD KEY": "x"}}'), 400, "invalid_spec"),
    (post("/apps/a/config", b'{"set": {"A": 1}}'), 400, "bad_request"),
    (post("/apps/a/config", b'{"set": {"A": "line\\nbreak"}}'), 400, "invalid_spec"),
    (post("/apps/a/config", b"{}"), 400, "bad_request"),
    (post("/apps/a/scale", b"x" * 70_000), 413, "body_too_large"),
    (post("/apps/..%2Fetc/start", b""), 400, "invalid_spec"),
    (post("/apps/ghost/start", b""), 404, "app_not_found"),
    (b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    (b"DELETE /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "bad_request"),
    (b"GET /apps/a/logs?lines=lots HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400,
     "bad_request"),
])
def test_bad_requests_get_a_4xx_envelope_and_change_nothing(
        pikud: Pikud, request_bytes: bytes, status: int, code: str) -> None:
    pikud.add_app("a", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/a/deploy")
    before = pikud.api("GET", "/apps/a")
    got_status, body = raw_request(str(pikud.root / "pikud.sock"), request_bytes)
    assert (got_status, body["ok"], body["error"]["code"]) == (status, False, code), body
    assert body["error"]["message"]
    after = pikud.api("GET", "/apps/a")
    assert [p["pid"] for p in after["processes"]] == [p["pid"] for p in before["processes"]]
    assert not (pikud.root / "envs/a/ENV").exists()
    assert pikud.api("GET", "/status")["apps"] == 1        # still serving


def test_garbage_on_the_socket_does_not_hurt_the_daemon(pikud: Pikud) -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(pikud.root / "pikud.sock"))
        sock.sendall(b"\x00\xff garbage \r\n\r\n")
        assert b" 400 " in sock.recv(1024).split(b"\r\n")[0]     # aiohttp's own parser answers
    assert pikud.api("GET", "/status")["pid"] == pikud.proc.pid


def test_socket_is_0600(pikud: Pikud) -> None:
    assert stat.S_IMODE(os.stat(pikud.root / "pikud.sock").st_mode) == 0o600


SYSTEM_PYTHON = "/usr/bin/python3"      # readable by nobody, unlike a python under /root


@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(SYSTEM_PYTHON),
                    reason="needs root (to act as another uid) and /usr/bin/python3")
def test_another_uid_is_refused_even_when_the_mode_would_let_it_in(pikud: Pikud) -> None:
    sock_path = pikud.root / "pikud.sock"
    probe = ("import socket,sys\n"
             "s=socket.socket(socket.AF_UNIX); s.settimeout(5)\n"
             "try: s.connect(sys.argv[1])\n"
             "except PermissionError: print('EACCES'); raise SystemExit\n"
             "s.sendall(b'GET /status HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n')\n"
             "print(s.recv(4096).decode().split('\\r\\n')[0])\n")
    os.chmod(pikud.root, 0o755)
    as_nobody = [SYSTEM_PYTHON, "-c", probe, str(sock_path)]
    first = subprocess.run(as_nobody, user=65534, capture_output=True, text=True, timeout=10)
    assert first.stdout.strip() == "EACCES", first.stderr
    os.chmod(sock_path, 0o666)          # only the peer check stands in the way now
    second = subprocess.run(as_nobody, user=65534, capture_output=True, text=True, timeout=10)
    assert second.stdout.strip() == "HTTP/1.1 403 Forbidden", second.stdout + second.stderr
    assert pikud.api("GET", "/status")["pid"] == pikud.proc.pid


def test_cli_manages_an_app_from_start_to_destroy(pikud: Pikud) -> None:
    app = pikud.add_app("demo", "worker: echo hello from $APP; sleep 300\n", FAST)
    assert pikud.cli("deploy", "demo", check=True).returncode == 0
    apps = pikud.cli("apps", check=True).stdout
    assert "*demo" in apps.replace(" ", "") or "* demo" in apps
    ps = pikud.cli("ps", "demo", check=True).stdout
    assert "worker.1" in ps and "RUNNING" in ps
    data = json_out(pikud.cli("ps", "demo", "--json"))
    assert data["processes"][0]["state"] == "RUNNING" and data["processes"][0]["rss"] > 0
    logs = pikud.cli("logs", "demo", "--no-follow", check=True).stdout
    assert "hello from demo" in logs and "worker.1" in logs
    run = pikud.cli("run", "demo", "echo", "$APP", "$PWD", check=True).stdout
    assert run.split() == ["demo", str(app)]
    stopped = pikud.cli("stop", "demo", check=True)
    assert json_out(pikud.cli("ps", "demo", "--json"))["processes"] == [], stopped.stdout
    pikud.cli("start", "demo", check=True)
    assert json_out(pikud.cli("ps", "demo", "--json"))["processes"][0]["state"] == "RUNNING"
    (pikud.root / "data/demo/keep.db").write_text("precious")
    destroyed = pikud.cli("destroy", "demo", check=True).stdout
    assert "data/demo" in destroyed
    assert not app.exists() and (pikud.root / "data/demo/keep.db").read_text() == "precious"
    gone = pikud.cli("ps", "demo")
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_cli_events_show_transitions(pikud: Pikud) -> None:
    pikud.add_app("ev", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/ev/deploy")
    events = pikud.api("GET", "/events?lines=50")["events"]
    kinds = [(e["process"], e["event"]) for e in events if e["app"] == "ev"]
    assert ("ev:worker.1", "STARTING") in kinds and ("ev:worker.1", "RUNNING") in kinds


@pytest.mark.parametrize("reader", ["pipe", "socket"])
def test_followed_logs_end_when_their_reader_leaves(pikud: Pikud, reader: str) -> None:
    """As over ssh: the client goes away while no new line comes; the server side ends."""
    pikud.add_app("quiet", "worker: echo once && sleep 300\n", FAST)
    pikud.api("POST", "/apps/quiet/deploy")
    pikud.wait_state("quiet", "quiet:worker.1", "RUNNING")     # no new line comes after this
    ours, theirs = socket.socketpair() if reader == "socket" else os.pipe(), None
    if reader == "socket":
        ours, theirs = ours[0], ours[1]
        read_fd, write_fd = ours.fileno(), theirs.fileno()
    else:
        read_fd, write_fd = ours
    follow = subprocess.Popen([sys.executable, "-m", "pikud.cli", "logs", "quiet"],
                              env=pikud.env, stdout=write_fd, stderr=subprocess.DEVNULL)
    try:
        if reader == "socket":
            assert theirs is not None
            theirs.close()
        else:
            os.close(write_fd)
        seen = b""
        while b"entered RUNNING" not in seen:    # the last past line: it now waits for more
            chunk = os.read(read_fd, 4096)
            assert chunk, "logs ended before its first lines"
            seen += chunk
        if reader == "socket":
            ours.close()
        else:
            os.close(read_fd)
        assert follow.wait(timeout=10) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
