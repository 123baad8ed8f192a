"""pikud under systemd outlives its own death: kill -9, and the next pikud, started with
the descriptors systemd's store kept (a stand-in plays systemd), adopts the apps'
running processes instead of replacing them."""

from __future__ import annotations

import http.client
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, Pikud, alive, wait_for
from tests.integration.app_code import PID_SERVER
from tests.integration.systemd_stand_in import SystemdStandIn

# Each line in one write: print() under PYTHONUNBUFFERED writes "tick", " ", "4" and the
# newline apart, and the part a killed pikud had read is lost with it (README).
TICK = """\
import itertools, os, time
for n in itertools.count():
    os.write(1, f"tick {n}\\n".encode())
    time.sleep(0.05)
"""


@pytest.fixture
def systemd(short_root: Path) -> Iterator[SystemdStandIn]:
    stand_in = SystemdStandIn(short_root / "notify")
    try:
        yield stand_in
    finally:
        stand_in.close()


class Load:
    """A steady client on one port in a thread: counts answers and failures."""

    def __init__(self, port: int) -> None:
        self.port, self.answered, self.failures = port, 0, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):            # about 50 requests a second
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/")
                status = conn.getresponse().status
                if status == 200:
                    self.answered += 1
                else:
                    self.failures.append(str(status))
            except OSError as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


def ticks(daemon: Pikud) -> list[int]:
    return [int(n) for n in re.findall(r" tick (\d+)$", daemon.log_text("keep", "worker.1"),
                                       re.MULTILINE)]


def deploy(daemon: Pikud) -> dict[str, dict[str, object]]:
    app = daemon.add_app("keep", "web: python3 web.py\nworker: python3 tick.py\n",
                         FAST + "PIKU_LISTEN_FDS=true\n")
    (app / "web.py").write_text(PID_SERVER)
    (app / "tick.py").write_text(TICK)
    daemon.api("POST", "/apps/keep/deploy")
    return {name: daemon.wait_state("keep", name, "RUNNING")
            for name in ("keep:web.1", "keep:worker.1")}


def test_after_kill9_the_next_pikud_adopts_the_running_processes(
        pikud_factory, systemd: SystemdStandIn) -> None:
    daemon: Pikud = pikud_factory(extra_env={"NOTIFY_SOCKET": str(systemd.path)})
    procs = deploy(daemon)
    web, worker = procs["keep:web.1"]["pid"], procs["keep:worker.1"]["pid"]
    port, router = procs["keep:web.1"]["port"], daemon.http_port
    stored = {"control", "router", f"log.keep.web.1.{web}", f"listen.keep.web.1.{port}",
              f"log.keep.worker.1.{worker}"}
    wait_for(lambda: set(systemd.names()) == stored, 5, "the descriptors in the store")
    wait_for(lambda: ticks(daemon), 10, "the worker's first tick in its log")
    load = Load(port)
    try:
        daemon.kill9()
        # The app serves on without pikud: directly on its port (the load), and a
        # request to the router waits in its listener's backlog, which systemd holds.
        before = load.answered
        wait_for(lambda: load.answered >= before + 20, 10, "the app to serve without pikud")
        queued = http.client.HTTPConnection("127.0.0.1", router, timeout=30)
        queued.request("GET", "/", headers={"Host": "keep.localhost"})
        logged = ticks(daemon)[-1]

        daemon.start(launch=systemd.launch)
        answer = queued.getresponse()
        assert (answer.status, answer.read().decode()) == (200, str(web))
        queued.close()
        out = daemon.output()
        assert f"adopted: keep:web.1 with pid {web}" in out
        assert f"adopted: keep:worker.1 with pid {worker}" in out
        assert "processes left running by a previous pikud" not in out
        assert daemon.api("GET", "/status")["started"] == "adoption"
        assert daemon.http_port == router
        now = {p["name"]: (p["pid"], p["port"]) for p in daemon.processes("keep")}
        assert now == {"keep:web.1": (web, port), "keep:worker.1": (worker, None)}
        daemon.wait_state("keep", "keep:web.1", "RUNNING")
        ps = daemon.cli("ps", "keep", check=True).stdout
        assert str(web) in ps and str(worker) in ps and "RUNNING" in ps
        assert daemon.get("keep") == (200, str(web))       # routed again
        # What the worker printed while no pikud read its pipe reached its log, in order.
        wait_for(lambda: ticks(daemon)[-1] > logged + 10, 10, "ticks after the gap")
        seen = ticks(daemon)
        assert seen == list(range(seen[0], seen[-1] + 1))

        os.kill(worker, signal.SIGKILL)     # an adopted process is watched: seen, respawned
        wait_for(lambda: (p := daemon.process("keep", "keep:worker.1"))["pid"] not in
                 (worker, None) and p["state"] == "RUNNING", 15, "the worker to come back")
        assert ("exited: keep:worker.1 (status unknown: adopted; not expected)"
                in daemon.output())
        assert f"log.keep.worker.1.{worker}" not in systemd.names()
    finally:
        load.stop()
    assert load.failures == [] and load.answered > 50


def test_without_the_store_the_next_pikud_replaces_the_leftovers(
        pikud_factory, systemd: SystemdStandIn) -> None:
    """systemctl stop flushed the store (or there is no systemd): nothing to adopt."""
    daemon: Pikud = pikud_factory(extra_env={"NOTIFY_SOCKET": str(systemd.path)})
    old = {p["pid"] for p in deploy(daemon).values()}
    daemon.kill9()
    systemd.flush()
    daemon.start(extra_env={"NOTIFY_SOCKET": str(systemd.path)})
    running = wait_for(lambda: len(procs := daemon.processes("keep")) == 2 and all(
        p["state"] == "RUNNING" for p in procs) and procs, 15, "keep to run again")
    new = {p["pid"] for p in running}
    assert not new & old and not any(alive(pid) for pid in old)
    out = daemon.output()
    assert "processes left running by a previous pikud" in out and "adopted:" not in out
    assert daemon.api("GET", "/status")["started"] == "boot"


def test_a_process_whose_spec_changed_meanwhile_is_replaced_on_the_same_socket(
        pikud_factory, systemd: SystemdStandIn) -> None:
    """ENV edited while no pikud ran: its processes run what the app no longer does."""
    daemon: Pikud = pikud_factory(extra_env={"NOTIFY_SOCKET": str(systemd.path)})
    procs = deploy(daemon)
    old = {p["pid"] for p in procs.values()}
    port = procs["keep:web.1"]["port"]
    daemon.kill9()
    env = daemon.root / "apps/keep/ENV"
    env.write_text(env.read_text() + "GREETING=changed\n")
    daemon.start(launch=systemd.launch)
    running = wait_for(lambda: len(procs := daemon.processes("keep")) == 2 and all(
        p["state"] == "RUNNING" and p["pid"] not in old for p in procs) and procs, 15,
        "keep to run its new spec")
    web = next(p for p in running if p["name"] == "keep:web.1")
    wait_for(lambda: daemon.output().count("ready:") == 2, 15, "the boot to end")
    assert web["port"] == port and daemon.get("keep") == (200, str(web["pid"]))
    assert not any(alive(pid) for pid in old)
    out = daemon.output()
    assert "not adopted: keep:web.1" in out and "not adopted: keep:worker.1" in out


def test_a_slot_on_a_unix_socket_is_adopted_with_its_socket(
        pikud_factory, systemd: SystemdStandIn, app_servers: Path) -> None:
    servers = {"PATH": f"{app_servers}:{os.environ['PATH']}"}
    daemon: Pikud = pikud_factory(extra_env={"NOTIFY_SOCKET": str(systemd.path), **servers})
    app = daemon.add_app("uds", "wsgi: hello:application\n",
                         FAST + "PIKU_WSGI_SERVER=gunicorn\nUWSGI_PROCESSES=1\n")
    (app / "hello.py").write_text(
        "import os\n\ndef application(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [str(os.getppid()).encode()]\n")        # the worker's parent: gunicorn's main
    daemon.api("POST", "/apps/uds/deploy")
    proc = daemon.wait_state("uds", "uds:wsgi.1", "RUNNING")
    stem = Path(proc["socket"]).name.removesuffix(".sock")
    wait_for(lambda: f"listen.uds.wsgi.1.{stem}" in systemd.names(), 5, "the socket stored")
    assert daemon.get("uds") == (200, str(proc["pid"]))

    daemon.kill9()
    daemon.start(launch=systemd.launch, extra_env=servers)
    wait_for(lambda: f"adopted: uds:wsgi.1 with pid {proc['pid']}" in daemon.output(), 10,
             "the adoption")
    again = daemon.process("uds", "uds:wsgi.1")
    assert (again["pid"], again["socket"]) == (proc["pid"], proc["socket"])
    assert daemon.get("uds") == (200, str(proc["pid"]))
    assert f"listen.uds.wsgi.1.{stem}" in systemd.names()
