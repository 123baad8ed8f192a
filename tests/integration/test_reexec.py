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
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import pikud as package
from pikud.errors import PikudError

from ..conftest import FAST, Pikud, app_processes, json_out, wait_for
from .app_code import PID_SERVER

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
    # The count includes the test's own connections while they close, so a leak is a
    # count that stays above the first one.
    descriptors = len(os.listdir(f"/proc/{daemon_pid}/fd"))
    reexec(pikud)
    wait_for(lambda: len(os.listdir(f"/proc/{daemon_pid}/fd")) <= descriptors, 10,
             f"the daemon back to at most {descriptors} descriptors")
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


def test_behind_nginx_a_reexec_into_code_that_needs_ssl_is_refused_and_the_old_image_serves(
        pikud_factory: Callable[..., Pikud], tmp_path: Path) -> None:
    """Behind nginx the daemon runs on stock asyncio with ssl held off (launch.py): the
    preflight imports the new code so too, or new code that needs ssl would pass it and
    then kill the new image, its apps left unsupervised."""
    copy = tmp_path / "code"
    shutil.copytree(Path(package.__file__).parent, copy / "pikud")
    daemon = pikud_factory(extra_env={"PYTHONPATH": str(copy), "PIKU_PROXY": "nginx"},
                           cwd=tmp_path)
    assert daemon.api("GET", "/status")["loop"] == "asyncio"
    app = daemon.add_app("calm", WORKER, FAST)
    (app / "ticker.py").write_text(TICKER)
    daemon.api("POST", "/apps/calm/deploy")
    before = daemon.wait_state("calm", "calm:worker.1", "RUNNING")["pid"]
    module = copy / "pikud" / "handover.py"
    text = module.read_text()
    module.write_text(text + "import ssl  # new code that needs it\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "re-exec refused: " in daemon.output(), 30, "the refusal")
    assert "import of ssl halted" in daemon.output()
    assert daemon.api("GET", "/status")["started"] == "boot"
    module.write_text(text)
    reexec(daemon)
    status = daemon.api("GET", "/status")
    assert (status["started"], status["loop"]) == ("re-exec", "asyncio")
    assert daemon.process("calm", "calm:worker.1")["pid"] == before


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


@pytest.mark.parametrize("front", ["builtin", "nginx"])     # uvloop; stock asyncio
def test_a_sigterm_during_the_reexec_is_carried_to_the_new_image_which_stops(
        pikud_factory: Callable[..., Pikud], front: str) -> None:
    pikud = pikud_factory(extra_env={"PIKU_PROXY": front})
    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "while True: time.sleep(1)\n")
    app = pikud.add_app("st", "worker: exec python3 stubborn.py\n", FAST)
    (app / "stubborn.py").write_text(stubborn)
    pikud.api("POST", "/apps/st/deploy")
    worker = pikud.wait_state("st", "st:worker.1", "RUNNING")["pid"]
    # A restart holds the app's lock while the worker ignores its SIGTERM (stop timeout 3 s):
    # the re-exec waits for it, and a SIGTERM sent meanwhile waits in the daemon's queue.
    restart = threading.Thread(target=lambda: pikud.cli("restart", "st"), daemon=True)
    restart.start()
    wait_for(lambda: pikud.process("st", "st:worker.1")["state"] == "STOPPING", 10, "STOPPING")
    assert pikud.proc is not None
    # No thread but the main one may take a signal (and lose it with the image): libuv's,
    # or the default executor's.
    tasks = Path(f"/proc/{pikud.proc.pid}/task")
    others = [t for t in tasks.iterdir() if t.name != str(pikud.proc.pid)]
    assert others or front == "nginx"
    assert all(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1))
               for t in others for line in (t / "status").read_text().splitlines()
               if line.startswith("SigBlk:"))
    pikud.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "received SIGUSR2" in pikud.output(), 10, "the re-exec to begin")
    pikud.proc.send_signal(signal.SIGTERM)
    assert pikud.proc.wait(30) == 0, pikud.output()[-2000:]
    restart.join(10)
    log = pikud.output()
    assert "re-exec: pikud" in log and log.index("re-exec: pikud") < log.index("received SIGTERM")
    assert "stopped" in log.rsplit("received SIGTERM", 1)[1]
    wait_for(lambda: not os.path.exists(f"/proc/{worker}"), 10, "the old worker gone")
    assert not app_processes(pikud.root)


def test_a_new_image_that_cannot_read_the_record_starts_afresh_instead_of_dying(
        pikud_factory: Callable[..., Pikud], tmp_path: Path) -> None:
    copy = tmp_path / "code"
    shutil.copytree(Path(package.__file__).parent, copy / "pikud")
    daemon = pikud_factory(extra_env={"PYTHONPATH": str(copy)}, cwd=tmp_path)
    deploy(daemon)
    before = pids(daemon, "web")
    module = copy / "pikud" / "handover.py"
    reader = "def _record(data: dict[str, Any]) -> Record:\n"
    module.write_text(module.read_text().replace(
        reader, reader + "    raise KeyError('broken on purpose')\n"))
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: "starting afresh" in daemon.output(), 30, "the new image's refusal")

    def started_again() -> bool:
        try:
            processes = daemon.processes("web")
        except PikudError:          # refused while the fresh start binds the socket again
            return False
        return {(p["name"], p["state"]) for p in processes if p["pid"] not in before.values()} \
            == {("web:web.1", "RUNNING"), ("web:worker.1", "RUNNING")}

    wait_for(started_again, 15, "the app started again")
    assert "broken on purpose" in daemon.output()
    status = daemon.api("GET", "/status")
    assert status["started"] == "boot" and status["errors"][-1]["event"] == "error"
    assert daemon.get("web")[0] == 200
    assert not app_processes(daemon.root) & set(before.values())


def answers(daemon: Pikud, timeout: float) -> bool:
    """The control socket answers within ``timeout`` (it does not while a re-exec quiesces)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(daemon.root / "pikud.sock"))
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: pikud\r\nConnection: close\r\n\r\n")
        try:
            return bool(sock.recv(1))
        except TimeoutError:
            return False


def test_an_env_edit_made_during_the_reexec_is_applied_by_the_new_image(pikud: Pikud) -> None:
    stubborn = ("import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                "while True: time.sleep(1)\n")
    app = pikud.add_app("ed", "worker: exec python3 stubborn.py\n", FAST)
    (app / "stubborn.py").write_text(stubborn)
    pikud.api("POST", "/apps/ed/deploy")
    pikud.wait_state("ed", "ed:worker.1", "RUNNING")
    restart = threading.Thread(target=lambda: pikud.cli("restart", "ed"), daemon=True)
    restart.start()     # holds the app's lock for the worker's stop timeout (3 s)
    wait_for(lambda: pikud.process("ed", "ed:worker.1")["state"] == "STOPPING", 10, "STOPPING")
    assert pikud.proc is not None
    pikud.proc.send_signal(signal.SIGUSR2)
    wait_for(lambda: not answers(pikud, 0.3), 10, "the re-exec to quiesce")
    (pikud.root / "envs" / "ed" / "ENV").write_text("EDITED=during-the-reexec\n")
    wait_for(lambda: pikud.output().count(" adopted ") > 0, 30, "the new image")
    restart.join(10)

    def edited() -> bool:
        proc = pikud.process("ed", "ed:worker.1")
        return proc["state"] == "RUNNING" and b"EDITED=during-the-reexec" in Path(
            f"/proc/{proc['pid']}/environ").read_bytes()
    wait_for(edited, 15, "the edit applied")
    assert "ENV or SCALING edited, applying" in pikud.output().rsplit(" adopted ", 1)[1]
