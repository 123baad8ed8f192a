"""Real children under a real daemon: respawn, backoff, FATAL, stop escalation, orphans."""

from __future__ import annotations

import asyncio
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pikud.procman.children import descendants, processes
from pikud.procman.logs import LogFile
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ManagedProcess, ProcessSpec, read_rss
from pikud.procman.state import ProcessState
from tests.conftest import FAST, Pikud, alive, app_processes, proc_stat, wait_for
from tests.integration.app_code import PID_SERVER


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


def deployed_with_pid_file(pikud: Pikud, name: str, script: str, code: str,
                           pid_file: str) -> tuple[int, int]:
    """Deploy ``name`` with one worker running ``script`` (``code``); the worker's pid,
    and the pid the script writes into ``pid_file`` (first argument, or its own choice)."""
    app = pikud.add_app(name, f"worker: python3 {script} {pid_file}\n", FAST)
    (app / script).write_text(code)
    pikud.api("POST", f"/apps/{name}/deploy")
    worker = pikud.wait_state(name, f"{name}:worker.1", "RUNNING")["pid"]
    path = app / pid_file
    written = wait_for(lambda: path.exists() and path.read_text(), 5, f"{pid_file} written")
    return worker, int(written)


def test_double_forked_grandchild_dies_with_its_app(pikud: Pikud, tmp_path: Path) -> None:
    worker, grandchild = deployed_with_pid_file(pikud, "forky", "daemonize.py", DAEMONIZE,
                                                "grandchild.pid")
    assert alive(grandchild)
    # It left the worker's group and was orphaned: pikud, a subreaper, is now its parent.
    fields = proc_stat(grandchild)
    assert fields is not None
    assert int(fields[1]) == pikud.proc.pid and int(fields[3]) != worker
    pikud.api("POST", "/apps/forky/stop")
    wait_for(lambda: not os.path.exists(f"/proc/{grandchild}"), 5, "the grandchild reaped")


def test_orphans_that_exit_on_their_own_are_reaped(pikud: Pikud) -> None:
    # The shell backgrounds a short sleep and exits; the sleep is orphaned to pikud.
    app = pikud.add_app("orphans", "worker: (sleep 0.2 & echo $! > orphan) ; sleep 300\n", FAST)
    pikud.api("POST", "/apps/orphans/deploy")
    pikud.wait_state("orphans", "orphans:worker.1", "RUNNING")
    orphan = int(wait_for(lambda: (app / "orphan").read_text().strip(), 5, "the orphan's pid"))

    def zombies() -> list[str]:
        return [entry.name for entry in os.scandir("/proc") if entry.name.isdigit()
                and (fields := proc_stat(entry.name)) is not None
                and fields[0] == "Z" and int(fields[1]) == pikud.proc.pid]

    # Reaped, its /proc entry goes (a zombie keeps one): the event that proves the reaping.
    wait_for(lambda: not os.path.exists(f"/proc/{orphan}"), 5, "the orphan to be reaped")
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



def test_scale_down_returns_once_traffic_left_and_the_copy_retires_after(pikud: Pikud) -> None:
    app = pikud.add_app("shrink", "web: python3 web.py\n", FAST + "PIKU_LISTEN_FDS=true\n")
    (app / "web.py").write_text(PID_SERVER)
    pikud.api("POST", "/apps/shrink/scale", {"scaling": {"web": 2}})
    pikud.api("POST", "/apps/shrink/deploy")
    second = pikud.wait_state("shrink", "shrink:web.2", "RUNNING")["pid"]
    pikud.cli("ps:scale", "shrink", "web=1", check=True)
    assert [p["name"] for p in pikud.processes("shrink")] == ["shrink:web.1"]
    assert alive(second)                # still draining: the scale did not wait for it
    wait_for(lambda: "retired: shrink:web.2 (scaled away, drained and stopped in"
             in pikud.log_text("shrink", "pikud"), 15, "web.2's retirement")
    assert not alive(second)


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


FORKER = """\
import os, time
for _ in range(2):                               # two workers, as granian's main starts
    if os.fork() == 0:
        time.sleep(300)
        os._exit(0)
print("forked", flush=True)
time.sleep(300)
"""


THREAD_SPAWNER = """\
import subprocess, sys, threading
HOLD = "import time; data = b'x' * (64 << 20); print(flush=True); time.sleep(300)"

def spawn():                    # a child of this thread, not of the main one
    child = subprocess.Popen([sys.executable, "-c", HOLD], stdout=subprocess.PIPE)
    child.stdout.readline()     # its 64 MB are resident
    print(child.pid, flush=True)
    child.wait()

thread = threading.Thread(target=spawn)
thread.start()
thread.join()
"""


def test_rss_counts_what_any_thread_started() -> None:
    proc = subprocess.Popen([sys.executable, "-c", THREAD_SPAWNER], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    assert proc.stdout is not None
    try:
        assert select.select([proc.stdout], [], [], 10)[0], "the thread's child in 10 s"
        child = int(proc.stdout.readline())
        assert child in descendants(proc.pid)
        own = int(Path(f"/proc/{proc.pid}/statm").read_text().split()[1]) * os.sysconf(
            "SC_PAGE_SIZE")
        total = read_rss(proc.pid)
        assert total is not None and total - own >= 64 << 20, (total, own)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
    wait_for(lambda: not alive(child), 5, "the thread's child to die")
    assert read_rss(proc.pid) is None


def started_below(pid: int, count: int) -> set[int]:
    """The processes below ``pid``, once there are ``count`` of them."""
    return wait_for(lambda: len(below := descendants(pid) - {pid}) >= count and below, 5,
                    f"{count} processes below {pid}")  # type: ignore[no-any-return]


@pytest.mark.parametrize("command, below", [
    ("python3 forker.py", 2),                            # exec'd: a server and its workers
    ("sleep 1000; echo done", 1),                        # dash does not exec the sleep
    ("python3 forker.py 2>&1 | cat", 4),                 # a pipe: both sides are the shell's
])
def test_what_a_dead_main_process_started_is_stopped_before_the_respawn(
        pikud: Pikud, command: str, below: int) -> None:
    app = pikud.add_app("orphan", f"worker: {command}\n", FAST)
    (app / "forker.py").write_text(FORKER)
    pikud.api("POST", "/apps/orphan/deploy")
    main = pikud.wait_state("orphan", "orphan:worker.1", "RUNNING")["pid"]
    old = started_below(main, below)
    os.kill(main, 9)
    respawned = wait_for(lambda: (p := pikud.process("orphan", "orphan:worker.1"))["pid"]
                         not in (None, main) and p, 10, "the respawn")
    # Gone before the new process was spawned, so as soon as the API shows it.
    assert [pid for pid in old if alive(pid)] == []
    out = pikud.output()
    assert f"leftovers: orphan:worker.1 stopping {processes(below)} left by pid {main}" in out
    assert out.index("leftovers: orphan:worker.1") < out.index(
        f"spawned: orphan:worker.1 with pid {respawned['pid']}")
    started_below(respawned["pid"], below)              # the new tree runs whole


LEADER = """\
import os, signal, sys, time
workers = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:                # a worker: notes a SIGTERM, leaves on its leader's SIGUSR1
        def termed(*args):
            open(f"termed.{os.getpid()}", "w").close()
            os._exit(1)
        signal.signal(signal.SIGTERM, termed)
        signal.signal(signal.SIGUSR1, lambda *args: os._exit(0))
        time.sleep(300)
        os._exit(0)
    workers.append(pid)

def stop_workers(*args):       # as granian's and gunicorn's main processes do
    for pid in workers:
        os.kill(pid, signal.SIGUSR1)
    for pid in workers:
        os.waitpid(pid, 0)
    sys.exit(0)

mode = sys.argv[1]
if mode == "stops-its-workers":
    signal.signal(signal.SIGTERM, stop_workers)
elif mode == "ignores-sigterm":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(300)
"""


@pytest.mark.parametrize("mode, termed, killed", [
    ("stops-its-workers", 0, None),     # its workers get no SIGTERM from pikud
    ("dies", 2, None),                  # what it leaves gets SIGTERM once it is gone
    ("ignores-sigterm", 2, "1 process"),    # the rest at its timeout, then SIGKILL for it
])
def test_a_program_stops_its_workers_itself_and_what_it_leaves_is_stopped_after(
        pikud: Pikud, tmp_path: Path, mode: str, termed: int, killed: str | None) -> None:
    app = pikud.add_app("leader", f"worker: python3 leader.py {mode}\n",
                        FAST.replace("PIKU_STOP_TIMEOUT=3", "PIKU_STOP_TIMEOUT=1"))
    (app / "leader.py").write_text(LEADER)
    pikud.api("POST", "/apps/leader/deploy")
    main = pikud.wait_state("leader", "leader:worker.1", "RUNNING")["pid"]
    wait_for(lambda: "up" in pikud.log_text("leader", "worker.1"), 5, "the leader's start")
    workers = started_below(main, 2)
    pikud.api("POST", "/apps/leader/stop")
    assert [pid for pid in {main, *workers} if alive(pid)] == []
    assert len(list(app.glob("termed.*"))) == termed
    out = pikud.output()
    assert "stopped: leader:worker.1" in out
    if killed is None:
        assert "SIGKILL" not in out
    else:
        assert f"SIGKILL needed for {killed}" in out


DETACHER = """\
import subprocess, sys, time
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                          env={}, start_new_session=True)   # no PIKU_* left, its own session
open("helper.pid", "w").write(str(helper.pid))
time.sleep(300)
"""


def test_a_helper_that_left_the_session_and_the_environment_is_stopped_with_its_program(
        pikud: Pikud) -> None:
    """Once the program is gone its helper is re-parented to pikud, and neither its session
    nor its environment tells whose it is: it is found below the program before the
    program's SIGTERM."""
    main, helper = deployed_with_pid_file(pikud, "detach", "detacher.py", DETACHER, "helper.pid")
    try:
        assert helper in descendants(main)
        pikud.api("POST", "/apps/detach/stop")
        assert not alive(main)
        assert not alive(helper)
    finally:
        if alive(helper):
            os.kill(helper, signal.SIGKILL)


def test_a_shell_builtin_as_the_whole_command_runs_in_the_shell(pikud: Pikud) -> None:
    pikud.add_app("builtin", "worker: exit 3\n", FAST + "PIKU_START_RETRIES=0\n")
    pikud.api("POST", "/apps/builtin/deploy")
    assert pikud.wait_state("builtin", "builtin:worker.1", "FATAL")["last_exit"] == "exit status 3"


IGNORES_TERM = ("python3 -c 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print(\"ready\", flush=True); time.sleep(300)'; echo done")


def test_a_stop_that_needed_sigkill_says_so(pikud: Pikud) -> None:
    # The shell dies of the SIGTERM; the program it waits for ignores it and needs SIGKILL.
    pikud.add_app("mixed", f"worker: {IGNORES_TERM}\n",
                  FAST.replace("PIKU_STOP_TIMEOUT=3", "PIKU_STOP_TIMEOUT=0.5"))
    pikud.api("POST", "/apps/mixed/deploy")
    pikud.wait_state("mixed", "mixed:worker.1", "RUNNING")
    wait_for(lambda: "ready" in pikud.log_text("mixed", "worker.1"), 5, "ready")
    pikud.cli("stop", "mixed", check=True)
    out = pikud.output()
    assert "killed: mixed:worker.1 did not stop within 0.5s; sent SIGKILL to 1 process" in out
    assert "stopped: mixed:worker.1 (killed by SIGTERM; SIGKILL needed for 1 process)" in out


def test_a_crash_loop_without_backoff_is_held_to_ten_spawns_a_second(pikud: Pikud) -> None:
    pikud.add_app("hot", "worker: false\n", "PIKU_START_SECS=0.3\nPIKU_BACKOFF_BASE=0\n"
                  "PIKU_BACKOFF_MAX=0\nPIKU_START_RETRIES=1000000\n")
    pikud.api("POST", "/apps/hot/deploy")
    wait_for(lambda: pikud.output().count("spawned: hot:worker.1") >= 2, 5, "a respawn")
    before, started = pikud.output().count("spawned: hot:worker.1"), time.monotonic()
    time.sleep(1.0)                     # the measure is a rate: spawns within a second
    spawns = pikud.output().count("spawned: hot:worker.1") - before
    took = time.monotonic() - started
    assert spawns <= 10 * took + 1, spawns
    assert pikud.process("hot", "hot:worker.1")["state"] in ("BACKOFF", "STARTING")


async def test_a_fault_in_supervision_leaves_the_slot_fatal_not_starting(tmp_path: Path) -> None:
    """An unexpected error (here a log follower that fails) ends in FATAL with its reason,
    and the slot is retried at start, instead of hanging in STARTING with no process."""
    def follower(source: str, line: str) -> None:
        if "pikud: fault:worker.1" in line:
            raise RuntimeError("a broken follower")

    events: list[tuple[str, str]] = []
    spec = ProcessSpec(name="fault:worker.1", kind="worker", index=1, command="false",
                       env=(("PATH", os.environ["PATH"]),), cwd=tmp_path,
                       log_path=tmp_path / "worker.log",
                       policy=RestartPolicy(start_secs=1, fatal_cooloff=600))
    log = LogFile(spec.log_path, "worker.1", 1 << 20, 1, {follower})
    proc = ManagedProcess(spec, lambda name, event, phrase: events.append((event, phrase)), log)
    proc.start()
    try:
        # Bounded polls of the state and the events the sink recorded (no waiter for either).
        async with asyncio.timeout(10):
            while proc.state is not ProcessState.FATAL:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        assert proc.child is None and proc.snapshot()["pid"] is None
        assert events[-1] == ("FATAL", "gave up: fault:worker.1 entered FATAL state, "
                              "supervision failed (RuntimeError: a broken follower); "
                              "retrying in 600s")
        assert proc.last_exit == "supervision failed (RuntimeError: a broken follower)"
        proc.start()                                    # a start retries it at once
        async with asyncio.timeout(10):
            while sum(event == "STARTING" for event, _ in events) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await proc.stop()
        log.close()
    assert proc.state is ProcessState.STOPPED


@pytest.mark.parametrize("command", [
    "python3 forker.py 2>&1 | cat",
    "python3 forker.py 2>&1 | logger -s --socket-errors=off -t app",
    "cd sub && python3 ../forker.py",
    ". ./settings.sh; python3 forker.py",
])
def test_compound_commands_stop_whole_on_restart_and_stop(pikud: Pikud, command: str) -> None:
    app = pikud.add_app("piped", f"worker: {command}\n", FAST)
    (app / "forker.py").write_text(FORKER)
    (app / "settings.sh").write_text("GREETING=hello\n")
    (app / "sub").mkdir()
    pikud.api("POST", "/apps/piped/deploy")

    def running_tree() -> tuple[int, set[int]]:
        main = pikud.wait_state("piped", "piped:worker.1", "RUNNING")["pid"]
        return main, started_below(main, 2) | {main}

    main, first = running_tree()
    pikud.cli("restart", "piped", check=True)
    main, second = running_tree()
    assert not first & second and [pid for pid in first if alive(pid)] == []
    os.kill(main, 9)                    # the shell dies (oom killer, a hand): a respawn
    wait_for(lambda: pikud.process("piped", "piped:worker.1")["pid"] not in (None, main), 10,
             "the respawn")
    third = running_tree()[1]
    pikud.cli("stop", "piped", check=True)
    assert [pid for pid in second | third if alive(pid)] == []
    assert app_processes(pikud.root) == set()


def test_a_start_while_a_fatal_slot_stops_its_leftovers_is_not_lost(pikud: Pikud) -> None:
    """A start (or a deploy's retry) that lands while a slot that just went FATAL still
    stops what its process left: the slot respawns then, not after the cool-off."""
    pikud.add_app("lost", "worker: sh -c \"trap '' TERM; sleep 300\" & sleep 0.1; exit 1\n",
                  FAST.replace("PIKU_STOP_TIMEOUT=3", "PIKU_STOP_TIMEOUT=1.5")
                  + "PIKU_START_RETRIES=0\nPIKU_FATAL_COOLOFF=600\n")
    pikud.api("POST", "/apps/lost/deploy")
    wait_for(lambda: "leftovers: lost:worker.1" in pikud.output(), 10, "the leftovers' stop")
    pikud.api("POST", "/apps/lost/start")       # within its PIKU_STOP_TIMEOUT
    wait_for(lambda: pikud.output().count("spawned: lost:worker.1") >= 2, 10, "a retry")
