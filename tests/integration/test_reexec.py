"""SIGUSR2: pikud re-executes itself in place and adopts its apps, with a real daemon.

A client loop sends requests through the built-in router the whole time
(keep-alive, reconnecting when told ``Connection: close``) and counts
failures. The apps are plain Python servers on the daemon's socket (fd 3).
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pikud as package

from ..conftest import FAST, Pikud, json_out, wait_for

PID_SERVER = """\
import os, socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.daemon_threads = True
server.serve_forever()
"""
VERSION = package.__version__
TICKER = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.2)\n"
WORKER = "worker: exec python3 ticker.py\n"


def deploy(daemon: Pikud, name: str = "web", extra: str = "") -> None:
    app = daemon.add_app(name, "web: exec python3 server.py\n" + WORKER + extra,
                         FAST + "PIKU_LISTEN_FDS=true\n")
    (app / "server.py").write_text(PID_SERVER)
    (app / "ticker.py").write_text(TICKER)
    daemon.api("POST", f"/apps/{name}/deploy")
    daemon.wait_state(name, "web:web.1", "RUNNING")
    wait_for(lambda: daemon.get(name)[0] == 200, 15, "the app to answer")


class Load:
    """Requests in a loop on one keep-alive connection, until stopped; failures counted."""

    def __init__(self, port: int, host: str) -> None:
        self.port, self.host = port, host
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self.pids: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        while not self._stop.is_set() and self.sent < 20000:
            self.sent += 1
            try:
                conn.request("GET", "/", headers={"Host": self.host})
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    raise RuntimeError(f"{response.status} {body}")
                self.pids.add(body)
            except Exception as exc:
                self.failed += 1
                self.errors.append(repr(exc))
                conn.close()
        conn.close()

    def answered(self) -> int:
        return self.sent - self.failed

    @contextmanager
    def running(self) -> Iterator[Load]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(30)


def pids(daemon: Pikud, app: str) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in daemon.processes(app)}


def reexec(daemon: Pikud, more_answers: Callable[[], int] | None = None) -> None:
    """SIGUSR2, then wait for the new image to have adopted and to answer."""
    assert daemon.proc is not None
    before = daemon.output().count(" adopted ")
    daemon.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: daemon.output().count(" adopted ") > before, 30, "the new image")
    wait_for(lambda: daemon.api("GET", "/status")["started"] == "re-exec", 15, "status")
    if more_answers is not None:
        seen = more_answers()
        wait_for(lambda: more_answers() > seen + 20, 20, "requests answered by the new image")


def test_sigusr2_twice_under_load_keeps_every_process_and_loses_no_request(
        pikud: Pikud) -> None:
    deploy(pikud)
    before = pids(pikud, "web")
    assert pikud.proc is not None
    daemon_pid = pikud.proc.pid
    with Load(pikud.http_port, "web.localhost").running() as load:
        wait_for(lambda: load.answered() > 20, 15, "the load to start")
        reexec(pikud, load.answered)
        reexec(pikud, load.answered)
    assert load.failed == 0, load.errors[:5]
    assert pids(pikud, "web") == before
    assert load.pids == {str(before["web:web.1"])}
    status = pikud.api("GET", "/status")
    assert status["pid"] == daemon_pid and status["started"] == "re-exec"
    assert status["processes_by_state"] == {"RUNNING": 2}
    assert status["image_uptime"] < status["uptime"]
    ps = json_out(pikud.cli("ps", "web", "--json"))
    assert {p["name"]: (p["pid"], p["state"]) for p in ps["processes"]} == {
        name: (pid, "RUNNING") for name, pid in before.items()}
    log = pikud.output()
    assert log.count(f"re-exec: pikud {VERSION} -> {VERSION}") == 2  # the load saw both
    # Nothing the exec carries is left open twice: a third one holds as many descriptors.
    # (The control connection of reexec()'s last /status may close a moment later.)
    descriptors = len(os.listdir(f"/proc/{daemon_pid}/fd"))
    reexec(pikud)
    wait_for(lambda: len(os.listdir(f"/proc/{daemon_pid}/fd")) == descriptors, 10,
             "as many descriptors as before the re-exec")
    # The worker's output still reaches its log through the carried pipe.
    ticks = pikud.log_text("web", "worker.1").count("tick")
    wait_for(lambda: pikud.log_text("web", "worker.1").count("tick") > ticks + 2, 10,
             "the worker's output after the re-exec")


def test_a_process_that_exits_across_the_reexec_is_respawned_by_policy(pikud: Pikud) -> None:
    deploy(pikud)
    worker = pids(pikud, "web")["web:worker.1"]
    os.kill(worker, signal.SIGSTOP)     # held still, then killed while the daemon re-executes
    assert pikud.proc is not None
    pikud.proc.send_signal(signal.SIGUSR2)
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: pikud.output().count(" adopted ") > 0, 30, "the new image")
    new = wait_for(lambda: (p := pikud.process("web", "web:worker.1"))["pid"] not in (None, worker)
                   and p["state"] == "RUNNING" and p, 15, "a respawned worker")
    assert new["restarts"] == 1


def test_a_reexec_into_code_that_does_not_import_is_refused_and_the_old_image_serves(
        pikud_factory: Callable[..., Pikud], tmp_path: Path) -> None:
    copy = tmp_path / "code"
    shutil.copytree(Path(package.__file__).parent, copy / "pikud")
    daemon = pikud_factory(extra_env={"PYTHONPATH": str(copy)}, cwd=tmp_path)
    assert f"pikud {VERSION} listening" in daemon.output()
    deploy(daemon)
    before = pids(daemon, "web")
    init = copy / "pikud" / "__init__.py"
    init.write_text(init.read_text() + "raise ImportError('broken on purpose')\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "re-exec refused: " in daemon.output(), 30, "the refusal")
    assert "broken on purpose" in daemon.output()
    assert daemon.api("GET", "/status")["started"] == "boot"
    assert daemon.get("web")[0] == 200 and pids(daemon, "web") == before
    errors = daemon.api("GET", "/status")["errors"]
    assert errors and errors[-1]["event"] == "reexec_refused"
    # Fixed and with a new version, the same signal re-executes into it.
    init.write_text(init.read_text().replace("raise ImportError('broken on purpose')\n", "")
                    .replace(f'"{VERSION}"', '"99.0.0"'))
    reexec(daemon)
    assert f"re-exec: pikud {VERSION} -> 99.0.0" in daemon.output()
    status = daemon.api("GET", "/status")
    assert status["version"] == "99.0.0" and status["errors"] == errors     # carried over
    assert pids(daemon, "web") == before


def test_piku_status_shows_the_daemon(pikud: Pikud) -> None:
    deploy(pikud)
    text = pikud.cli("status", check=True).stdout
    assert f"{VERSION} (pid " in text and "started by boot" in text and "RUNNING 2" in text
    data = json_out(pikud.cli("status", "--json"))
    assert data["started"] == "boot" and data["apps_by_state"] == {"running": 1}


def test_a_cron_run_goes_on_across_the_reexec_and_ends_in_the_new_image(
        pikud: Pikud, tmp_path: Path) -> None:
    go = tmp_path / "go"
    waiter = (f"import os, time\nprint('started', flush=True)\n"
              f"while not os.path.exists({str(go)!r}): time.sleep(0.05)\nprint('done')\n")
    app = pikud.add_app("cr", "worker: exec python3 ticker.py\ncron1: 0 3 * * * python3 wait.py\n",
                        FAST)
    (app / "ticker.py").write_text(TICKER)
    (app / "wait.py").write_text(waiter)
    pikud.api("POST", "/apps/cr/deploy")
    pikud.cli("cron:run", "cr", "cron1", check=True)
    wait_for(lambda: "started" in pikud.log_text("cr", "cron1"), 15, "the run to start")
    reexec(pikud)
    assert pikud.api("GET", "/apps/cr/cron")["jobs"][0]["running"]
    go.touch()
    log = wait_for(lambda: "run ended: exit status 0" in pikud.log_text("cr", "cron1")
                   and pikud.log_text("cr", "cron1"), 15, "the run to end")
    assert "done" in log and log.count("run started") == 1
    assert pikud.api("GET", "/apps/cr/cron")["jobs"][0]["last_run"]["status"] == "exit status 0"
    assert "cron adopted: cr:cron1 run 1" in pikud.output()
