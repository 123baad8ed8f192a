"""Scale to zero with a real daemon: web slots sleep after PIKU_IDLE_TIMEOUT, a connection
wakes them.

The app is a plain Python server that serves the daemon's socket (fd 3) and
takes a second to boot, so the first request after a sleep really has
to wait in the socket's backlog. Requests go through the built-in router.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import time
from pathlib import Path

from pikud.procman.idle import has_traffic
from pikud.procman.logs import LogFile
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ManagedProcess, ProcessSpec
from pikud.procman.state import ProcessState
from tests.net import free_port

from ..conftest import FAST, Pikud, alive, wait_for
from .test_supervision import SLOW_FD_SERVER  # serves fd 3 after a 1 s boot

IDLE = "PIKU_LISTEN_FDS=true\nPIKU_IDLE_TIMEOUT=1\n"


def deploy_napper(pikud: Pikud, name: str, env: str = IDLE) -> None:
    app = pikud.add_app(name, "web: python3 slow.py\n", FAST + env)
    (app / "slow.py").write_text(SLOW_FD_SERVER)
    pikud.api("POST", f"/apps/{name}/deploy")


def states(pikud: Pikud, app: str) -> dict[str, str]:
    return {proc["name"]: proc["state"] for proc in pikud.processes(app)}


def test_idle_web_processes_sleep_and_the_first_request_wakes_them_all(pikud: Pikud) -> None:
    deploy_napper(pikud, "nap")
    pikud.cli("ps:scale", "nap", "web=2", check=True)
    assert pikud.get("nap") == (200, "ok")
    pids = [proc["pid"] for proc in pikud.processes("nap")]
    assert all(pids)

    wait_for(lambda: set(states(pikud, "nap").values()) == {"IDLE"}, 15, "both to sleep")
    assert not any(alive(pid) for pid in pids)
    assert all(proc["pid"] is None and proc["port"] for proc in pikud.processes("nap"))

    started = time.monotonic()
    assert pikud.get("nap") == (200, "ok")         # waited, was not refused
    assert time.monotonic() - started >= 0.9                   # it really booted meanwhile

    def both_running() -> list[dict[str, object]] | None:
        procs = pikud.processes("nap")
        return procs if all(p["state"] == "RUNNING" for p in procs) else None

    awake = wait_for(both_running, 10, "both slots to wake")
    assert all(p["pid"] and p["pid"] not in pids for p in awake)
    assert "waking: nap:web." in pikud.log_text("nap", "pikud")

    wait_for(lambda: set(states(pikud, "nap").values()) == {"IDLE"}, 15, "a second sleep")


def test_an_open_connection_keeps_the_app_awake(pikud: Pikud) -> None:
    deploy_napper(pikud, "busy")
    proc = pikud.wait_state("busy", "busy:web.1", "RUNNING")
    with socket.create_connection(("127.0.0.1", proc["port"]), timeout=5):
        # The witness: an app with no client and twice the timeout, whose quiet spell
        # begins after busy's, goes to sleep; without the client busy would have slept first.
        deploy_napper(pikud, "quiet", IDLE.replace("TIMEOUT=1", "TIMEOUT=2"))
        pikud.wait_state("quiet", "quiet:web.1", "IDLE", timeout=15)
        assert pikud.process("busy", "busy:web.1")["state"] == "RUNNING"
    pikud.wait_state("busy", "busy:web.1", "IDLE", timeout=10)


def test_a_restart_while_asleep_brings_up_a_new_generation_that_sleeps_again(
        pikud: Pikud) -> None:
    deploy_napper(pikud, "again")
    old_port = pikud.wait_state("again", "again:web.1", "IDLE", timeout=15)["port"]
    pikud.cli("restart", "again", check=True)
    proc = pikud.process("again", "again:web.1")
    assert proc["state"] == "RUNNING" and proc["port"] != old_port
    assert pikud.get("again") == (200, "ok")
    pikud.wait_state("again", "again:web.1", "IDLE", timeout=15)
    assert pikud.get("again") == (200, "ok")


def test_a_request_that_wakes_the_old_generation_during_a_switch_is_served(
        pikud: Pikud) -> None:
    # The old generation boots for 4 s once woken; the new one (BOOT=0) is routed
    # to and the old one drained long before that, while the request waits in its backlog.
    app = pikud.add_app("late", "web: python3 slow.py\n", FAST + IDLE + "BOOT=4\n")
    server = SLOW_FD_SERVER.replace("import socket, time", "import os, socket, time").replace(
        "time.sleep(1.0)", "time.sleep(float(os.environ['BOOT']))")
    assert "BOOT" in server and "import os" in server
    (app / "slow.py").write_text(server)
    pikud.api("POST", "/apps/late/deploy")
    pikud.wait_state("late", "late:web.1", "IDLE", timeout=20)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(pikud.get, "late")
        wait_for(lambda: pikud.process("late", "late:web.1")["state"] != "IDLE", 5,
                 "the request to wake it")
        pikud.cli("config:set", "late", "BOOT=0", check=True)
        assert answer.result(timeout=20) == (200, "ok")


def test_a_slot_added_while_the_app_sleeps_goes_to_sleep_too(pikud: Pikud) -> None:
    deploy_napper(pikud, "grow")
    pikud.wait_state("grow", "grow:web.1", "IDLE", timeout=15)
    pikud.cli("ps:scale", "grow", "web=2", check=True)
    assert pikud.process("grow", "grow:web.2")["state"] == "RUNNING"
    pikud.wait_state("grow", "grow:web.2", "IDLE", timeout=15)
    assert pikud.get("grow") == (200, "ok")


def test_a_worker_that_keeps_restarting_does_not_keep_the_web_slots_awake(
        pikud: Pikud) -> None:
    app = pikud.add_app("churn", "web: python3 slow.py\nworker: sleep 0.5\n", FAST + IDLE)
    (app / "slow.py").write_text(SLOW_FD_SERVER)
    pikud.api("POST", "/apps/churn/deploy")
    pikud.wait_state("churn", "churn:web.1", "IDLE", timeout=15)
    assert pikud.process("churn", "churn:worker.1")["restarts"] >= 2       # it did churn


async def test_a_process_that_exits_just_as_it_is_put_to_sleep_sleeps(tmp_path: Path) -> None:
    port = free_port()
    spec = ProcessSpec(name="race:web.1", kind="web", index=1, command="sleep 1",
                       env=(("PATH", os.environ["PATH"]),), cwd=tmp_path,
                       log_path=tmp_path / "web.log", policy=RestartPolicy(start_secs=0.1),
                       port=port, inherits=True)
    log = LogFile(spec.log_path, "web.1", 1 << 20, 1, set())
    proc = ManagedProcess(spec, lambda *event: None, log)
    proc.start()

    async def reached(state: ProcessState, on_the_way: set[ProcessState]) -> None:
        async with asyncio.timeout(10):
            while proc.state is not state:
                assert proc.state in on_the_way, proc.state
                await asyncio.sleep(0.02)

    try:
        await reached(ProcessState.RUNNING, {ProcessState.STOPPED, ProcessState.STARTING})
        assert proc.child is not None
        # Suspend in the very callback that records the exit, before supervision sees it.
        proc.child._exit.add_done_callback(lambda _: proc.suspend())
        await reached(ProcessState.IDLE, {ProcessState.RUNNING, ProcessState.STOPPING})
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            await reached(ProcessState.RUNNING, {ProcessState.IDLE, ProcessState.STARTING})
    finally:
        await proc.stop()
        log.close()


def test_stopping_an_asleep_app_closes_its_socket(pikud: Pikud) -> None:
    deploy_napper(pikud, "off", "PIKU_LISTEN_FDS=true\nUWSGI_IDLE=1\n")   # piku's name works
    port = pikud.wait_state("off", "off:web.1", "IDLE", timeout=15)["port"]
    pikud.cli("stop", "off", check=True)
    assert pikud.processes("off") == []
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        refused = False
    except ConnectionRefusedError:
        refused = True
    assert refused


def test_scale_to_zero_needs_a_process_that_takes_the_socket(pikud: Pikud) -> None:
    deploy_napper(pikud, "binds", "")
    result = pikud.cli("config:set", "binds", "PIKU_IDLE_TIMEOUT=5")
    assert result.returncode != 0
    assert "PIKU_IDLE_TIMEOUT" in result.stderr and "PIKU_LISTEN_FDS" in result.stderr
    overrides = pikud.root / "envs" / "binds" / "ENV"
    assert not overrides.exists() or "PIKU_IDLE_TIMEOUT" not in overrides.read_text()


def test_has_traffic_sees_a_connection_waiting_in_a_backlog() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        assert not has_traffic({port})
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            assert has_traffic({port})                 # queued, nobody accepted it
            accepted, _ = listener.accept()
            with accepted:
                assert has_traffic({port})             # open
        accepted.close()
        wait_for(lambda: not has_traffic({port}), 5, "the connection to close")
