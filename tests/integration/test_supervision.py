"""Real children under a real daemon: respawn, backoff, FATAL, stop escalation, orphans."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import FAST, Pikud, alive, proc_stat, wait_for


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_crash_is_respawned(pikud_factory, loop: str) -> None:
    daemon: Pikud = pikud_factory("--loop", loop)
    daemon.add_app("crashy", "worker: echo up; sleep 0.6; exit 3\n", FAST)
    daemon.api("POST", "/apps/crashy/deploy")
    first = daemon.wait_state("crashy", "crashy:worker.1", "RUNNING")
    again = wait_for(lambda: (p := daemon.process("crashy", "crashy:worker.1"))["restarts"] >= 1
                     and p["pid"] not in (None, first["pid"]) and p, 10, "a respawn")
    assert again["last_exit"] == "exit status 3"
    assert "exited: crashy:worker.1 (exit status 3; not expected)" in daemon.output()
    assert not alive(first["pid"])


def test_crash_loop_backs_off_then_is_fatal_and_visible_in_ps(pikud: Pikud) -> None:
    pikud.add_app("loop", "worker: echo failing; exit 1\n",
                  FAST + "PIKU_START_RETRIES=3\nPIKU_FATAL_COOLOFF=600\n")
    pikud.api("POST", "/apps/loop/deploy")
    fatal = pikud.wait_state("loop", "loop:worker.1", "FATAL")
    assert fatal["pid"] is None and fatal["last_exit"] == "exit status 1"
    out = pikud.output()
    for attempt, delay in ((1, "0.1"), (2, "0.2"), (3, "0.4")):
        assert f"backoff: loop:worker.1 in {delay}s (attempt {attempt}" in out
    assert "gave up: loop:worker.1 entered FATAL state" in out
    ps = pikud.cli("ps", "loop")
    assert ps.returncode == 0 and "FATAL" in ps.stdout, ps.stdout + ps.stderr
    # A start retries a FATAL process at once.
    pikud.api("POST", "/apps/loop/start")
    wait_for(lambda: pikud.output().count("spawned: loop:worker.1") >= 5, 10, "a retry")


def test_child_ignoring_sigterm_is_killed_after_the_timeout(pikud: Pikud) -> None:
    pikud.add_app("stubborn", "worker: trap '' TERM; echo ready; while :; do sleep 0.1; done\n",
                  FAST.replace("PIKU_STOP_TIMEOUT=3", "PIKU_STOP_TIMEOUT=1"))
    pikud.api("POST", "/apps/stubborn/deploy")
    pid = pikud.wait_state("stubborn", "stubborn:worker.1", "RUNNING")["pid"]
    wait_for(lambda: "ready" in pikud.log_text("stubborn", "worker.1"), 5, "ready")
    started = time.monotonic()
    pikud.api("POST", "/apps/stubborn/stop")
    took = time.monotonic() - started
    assert not alive(pid)
    assert took >= 1.0
    assert "killed: stubborn:worker.1 did not stop within 1s; sent SIGKILL" in pikud.output()
    assert "did not stop within 1s; sent SIGKILL" in pikud.log_text("stubborn", "pikud")


DAEMONIZE = """\
import os, sys, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        open(sys.argv[1], "w").write(str(os.getpid()))
        time.sleep(300)
    os._exit(0)
time.sleep(300)
"""


def test_double_forked_grandchild_dies_with_its_app(pikud: Pikud, tmp_path: Path) -> None:
    app = pikud.add_app("forky", "worker: python3 daemonize.py grandchild.pid\n", FAST)
    (app / "daemonize.py").write_text(DAEMONIZE)
    pikud.api("POST", "/apps/forky/deploy")
    worker = pikud.wait_state("forky", "forky:worker.1", "RUNNING")["pid"]
    pidfile = app / "grandchild.pid"
    grandchild = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 5, "pid file"))
    assert alive(grandchild)
    # It left the worker's group and was orphaned: pikud, a subreaper, is now its parent.
    fields = proc_stat(grandchild)
    assert fields is not None
    assert int(fields[1]) == pikud.proc.pid and int(fields[3]) != worker
    pikud.api("POST", "/apps/forky/stop")
    wait_for(lambda: not os.path.exists(f"/proc/{grandchild}"), 5, "the grandchild reaped")


def test_orphans_that_exit_on_their_own_are_reaped(pikud: Pikud) -> None:
    # The shell backgrounds a short sleep and exits; the sleep is orphaned to pikud.
    pikud.add_app("orphans", "worker: (sleep 0.2 &) ; sleep 300\n", FAST)
    pikud.api("POST", "/apps/orphans/deploy")
    pikud.wait_state("orphans", "orphans:worker.1", "RUNNING")

    def zombies() -> list[str]:
        return [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()
                and (fields := proc_stat(entry.name)) is not None
                and fields[0] == "Z" and int(fields[1]) == pikud.proc.pid]

    time.sleep(0.6)
    assert zombies() == []


def test_scale_starts_and_stops_only_the_difference(pikud: Pikud) -> None:
    pikud.add_app("scaly", "worker: sleep 300\nother: sleep 300\n", FAST)
    pikud.api("POST", "/apps/scaly/deploy")
    before = {p["name"]: p["pid"] for p in pikud.processes("scaly")}
    detail = pikud.api("POST", "/apps/scaly/scale", {"scaling": {"worker": 3}})
    after = {p["name"]: p["pid"] for p in detail["processes"]}
    assert set(after) == {"scaly:worker.1", "scaly:worker.2", "scaly:worker.3", "scaly:other.1"}
    assert after["scaly:worker.1"] == before["scaly:worker.1"]
    assert after["scaly:other.1"] == before["scaly:other.1"]
    assert (pikud.root / "envs/scaly/SCALING").read_text() == "worker: 3\nother: 1\n"
    down = pikud.cli("ps:scale", "scaly", "worker=1", "other=0", check=True)
    assert "worker.1" in down.stdout and "worker.2" not in down.stdout
    final = {p["name"]: p["pid"] for p in pikud.processes("scaly")}
    assert final == {"scaly:worker.1": before["scaly:worker.1"]}
    assert not alive(after["scaly:worker.3"]) and not alive(after["scaly:other.1"])


def test_web_processes_get_their_own_port_and_the_live_env(pikud: Pikud) -> None:
    pikud.add_app("webby", "web: echo port=$PORT app=$APP type=$PROC_TYPE data=$DATA_ROOT; "
                  "sleep 300\n", FAST)
    pikud.api("POST", "/apps/webby/scale", {"scaling": {"web": 2}})
    pikud.api("POST", "/apps/webby/deploy")
    logs = [wait_for(lambda i=i: "port=" in pikud.log_text("webby", f"web.{i}")
                     and pikud.log_text("webby", f"web.{i}"), 5, "output") for i in (1, 2)]
    ports = {log.split("port=")[1].split()[0] for log in logs}
    assert len(ports) == 2
    assert f"app=webby type=web data={pikud.root}/data/webby" in logs[0]



def test_a_process_that_cannot_be_spawned_backs_off_and_recovers(pikud: Pikud) -> None:
    app = pikud.add_app("gone", "worker: sleep 300\n",
                        FAST + "PIKU_START_RETRIES=1000\nPIKU_BACKOFF_MAX=0.2\n")
    pikud.api("POST", "/apps/gone/deploy")
    pid = pikud.wait_state("gone", "gone:worker.1", "RUNNING")["pid"]
    moved = app.with_name("gone-aside")
    app.rename(moved)                    # its working directory disappears
    os.kill(pid, 9)
    wait_for(lambda: "spawn failed: gone:worker.1" in pikud.output(), 10, "a failed spawn")
    state = pikud.process("gone", "gone:worker.1")
    assert state["state"] in ("BACKOFF", "STARTING") and "could not start" in state["last_exit"]
    moved.rename(app)
    pikud.wait_state("gone", "gone:worker.1", "RUNNING")


SLOW_FD_SERVER = """\
import socket, time
from http.server import BaseHTTPRequestHandler, HTTPServer

time.sleep(1.0)                                  # a slow boot


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


server = HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.serve_forever()
"""


def test_a_daemon_owned_socket_queues_requests_while_the_server_boots_and_restarts(
        pikud: Pikud) -> None:
    import http.client
    app = pikud.add_app("queued", "web: python3 slow.py\n", FAST + "PIKU_LISTEN_FDS=true\n")
    (app / "slow.py").write_text(SLOW_FD_SERVER)
    pikud.api("POST", "/apps/queued/deploy")
    port = pikud.process("queued", "queued:web.1")["port"]

    def get() -> str:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        try:
            conn.request("GET", "/")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    assert get() == "ok"              # connected at once: the server was still sleeping
    pid = pikud.wait_state("queued", "queued:web.1", "RUNNING")["pid"]
    os.kill(pid, 9)
    assert get() == "ok"              # the crash and the slow respawn cost no connection
    assert pikud.process("queued", "queued:web.1")["pid"] != pid
