"""The daemon's life: kill -9 and restart, SIGHUP, systemd notify, watched files, config, logs."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pikud.control.client import RemoteError
from tests.conftest import FAST, Pikud, alive, app_processes, wait_for


def pids(daemon: Pikud, app: str) -> dict[str, int]:
    return {p["name"]: p["pid"] for p in daemon.processes(app)}


def test_kill9_then_restart_brings_every_app_back_as_it_was(pikud_factory) -> None:
    daemon: Pikud = pikud_factory()
    daemon.add_app("up", "worker: sleep 300\n", FAST)
    daemon.add_app("down", "worker: sleep 300\n", FAST)
    daemon.add_app("never", "worker: sleep 300\n", FAST)
    daemon.api("POST", "/apps/up/deploy")
    daemon.api("POST", "/apps/up/scale", {"scaling": {"worker": 2}})
    daemon.api("POST", "/apps/down/deploy")
    daemon.api("POST", "/apps/down/stop")
    old = set(pids(daemon, "up").values())
    daemon.kill9()
    assert old <= app_processes(daemon.root)        # orphans of the killed daemon
    daemon.start()
    wait_for(lambda: all(p["state"] == "RUNNING" for p in daemon.processes("up"))
             and len(daemon.processes("up")) == 2, 15, "up to run again")
    assert "processes left running by a previous pikud" in daemon.output()
    assert not any(alive(pid) for pid in old)
    assert not (daemon.root / "run").exists()       # no record without systemd
    assert daemon.processes("down") == [] and daemon.processes("never") == []
    states = {a["name"]: a["state"] for a in daemon.api("GET", "/apps")["apps"]}
    assert states == {"up": "running", "down": "stopped", "never": "stopped"}


def test_sigterm_stops_every_app_and_exits_0(pikud_factory) -> None:
    daemon: Pikud = pikud_factory()
    daemon.add_app("a", "worker: sleep 300\n", FAST)
    daemon.api("POST", "/apps/a/deploy")
    pid = pids(daemon, "a")["a:worker.1"]
    assert daemon.stop() == 0
    assert not alive(pid)
    assert not (daemon.root / "pikud.sock").exists()
    # main() ends with os._exit: the log is flushed first, to its last line.
    assert daemon.output().splitlines()[-1].endswith(" INFO stopped"), daemon.output()


def test_a_second_pikud_on_the_same_root_exits_1_with_its_reason_logged(pikud: Pikud) -> None:
    second = subprocess.run([sys.executable, "-m", "pikud", "serve"], env=pikud.env,
                            capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    assert second.stderr.splitlines()[-1].endswith(
        f"ERROR another pikud is already serving {pikud.root / 'pikud.sock'}"), second.stderr
    pikud.api("GET", "/status")                     # the first one serves on


def test_an_action_that_comes_during_the_shutdown_starts_nothing(pikud_factory) -> None:
    """A restart asked for while the shutdown stops the app waits for the app's turn and
    is then refused: what it started would outlive the daemon."""
    daemon: Pikud = pikud_factory()
    # TERM is ignored (sleep inherits that): every stop of this app takes its stop timeout
    daemon.add_app("slow", "worker: trap '' TERM; sleep 300\n",
                   FAST.replace("PIKU_STOP_TIMEOUT=3", "PIKU_STOP_TIMEOUT=2"))
    daemon.api("POST", "/apps/slow/deploy")
    daemon.wait_state("slow", "slow:worker.1", "RUNNING")
    assert daemon.proc is not None
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(daemon.api, "POST", "/apps/slow/restart")    # holds the app
        daemon.wait_state("slow", "slow:worker.1", "STOPPING")
        daemon.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down" in daemon.output(), 10, "the shutdown to begin")
        late = pool.submit(daemon.api, "POST", "/apps/slow/restart")     # queued behind it
        assert daemon.stop() == 0
        first.result()
        with pytest.raises(RemoteError) as refused:
            late.result()
    assert refused.value.code == "shutting_down"
    assert str(refused.value) == "pikud is shutting down: slow:worker.1 was not started"
    assert app_processes(daemon.root) == set()


def test_sighup_rereads_settings_without_touching_apps(pikud: Pikud) -> None:
    pikud.add_app("steady", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/steady/deploy")
    before = pids(pikud, "steady")
    (pikud.root / "pikud.toml").write_text(
        'log_level = "debug"\n[defaults]\nPIKU_STOP_TIMEOUT = 2\n')
    pikud.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: settings re-read" in pikud.output(), 5, "the reload")
    (pikud.root / "pikud.toml").write_text("log_level = 'loud'\n")
    pikud.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: kept the settings in force" in pikud.output(), 5, "the refusal")
    assert "log_level must be one of" in pikud.output()
    assert pids(pikud, "steady") == before


def test_an_unreadable_pikud_toml_on_sighup_keeps_the_settings_and_the_signals(
        short_root: Path, pikud_factory) -> None:
    """A pikud.toml that cannot be read, or not parsed, is logged and the settings in force
    stay; the signals after it are still acted on (SIGTERM stops)."""
    settings = short_root / "pikud.toml"
    settings.write_text("events_kept = 3\n")
    daemon: Pikud = pikud_factory()
    assert daemon.proc is not None
    settings.unlink()
    settings.mkdir()
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"SIGHUP: kept the settings in force: {settings}: cannot read it: "
             "Is a directory" in daemon.output(), 5, "the refusal of a folder")
    settings.rmdir()
    if os.geteuid() != 0:                   # root reads a mode 000 file all the same
        settings.write_text("events_kept = 50\n")
        settings.chmod(0)
        daemon.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: f"{settings}: cannot read it: Permission denied" in daemon.output(),
                 5, "the refusal of a file pikud may not read")
        settings.unlink()
    # nested past the parser's recursion limit
    settings.write_text("a = " + "[" * 5000 + "]" * 5000 + "\n")
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f"SIGHUP: kept the settings in force: {settings}: not valid TOML"
             in daemon.output(), 5, "the refusal of a nesting")
    assert "Traceback" not in daemon.output()
    daemon.add_app("kept", "worker: sleep 300\n", FAST)
    daemon.api("POST", "/apps/kept/deploy")
    assert len(daemon.api("GET", "/events?lines=50")["events"]) == 3      # events_kept = 3
    assert daemon.stop(timeout=15) == 0


def test_an_unreadable_pikud_toml_stops_the_start_in_one_line(short_root: Path,
                                                               tmp_path: Path) -> None:
    settings = short_root / "pikud.toml"
    settings.mkdir()
    result = subprocess.run([sys.executable, "-m", "pikud", "serve"],
                            env=Pikud(short_root, tmp_path / "pikud.log").env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr == f"pikud: {settings}: cannot read it: Is a directory\n"
    assert not (short_root / "pikud.sock").exists()


def test_systemd_notify_ready_and_stopping(pikud_factory, short_root: Path) -> None:
    path = short_root / "notify"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(path))
    listener.settimeout(15)
    try:
        daemon: Pikud = pikud_factory(extra_env={"NOTIFY_SOCKET": str(path),
                                                 "WATCHDOG_USEC": "200000"})
        daemon.add_app("n", "worker: env\n", FAST)
        received: list[str] = []       # the listeners stored in the descriptor store first
        while "WATCHDOG=1" not in received or not any("READY=1" in r for r in received):
            received.append(listener.recv(4096).decode())      # 15 s timeout
        assert any("READY=1" in r and "STATUS=" in r for r in received), received
        assert "WATCHDOG=1" in received        # every 0.1 s: half of WATCHDOG_USEC
        assert any(r.startswith("FDSTORE=1\nFDNAME=control\n") for r in received), received
        daemon.api("POST", "/apps/n/deploy")
        # The app never sees the daemon's NOTIFY_SOCKET.
        wait_for(lambda: "PROC_TYPE=worker" in daemon.log_text("n", "worker.1"), 5, "env")
        assert "NOTIFY_SOCKET" not in daemon.log_text("n", "worker.1")
        daemon.stop()
        assert "STOPPING=1" in wait_for(lambda: (m := listener.recv(4096).decode())
                                        and "STOPPING=1" in m and m, 10, "STOPPING=1")
    finally:
        listener.close()


def test_config_set_restarts_one_at_a_time_without_rebuild(pikud: Pikud) -> None:
    pikud.add_app("conf", "worker: echo greeting=$GREETING; sleep 300\n", FAST + "GREETING=hi\n")
    pikud.api("POST", "/apps/conf/scale", {"scaling": {"worker": 2}})
    pikud.api("POST", "/apps/conf/deploy")
    before = pids(pikud, "conf")
    result = pikud.cli("config:set", "conf", "GREETING='hello world'", check=True)
    assert "GREETING" in result.stdout
    after = pids(pikud, "conf")
    assert set(after) == set(before) and not set(after.values()) & set(before.values())
    wait_for(lambda: "greeting=hello world" in pikud.log_text("conf", "worker.2"), 5, "new env")
    out = pikud.output()
    # One at a time: worker.2 is stopped only after the new worker.1 is RUNNING.
    new1 = out.index("success: conf:worker.1 entered RUNNING state", out.index("config changed"))
    assert new1 < out.index("stopping: conf:worker.2")
    assert "GREETING=hello world" in (pikud.root / "envs/conf/ENV").read_text()
    assert pikud.cli("config:get", "conf", "GREETING", check=True).stdout.strip() == "hello world"
    live = pikud.api("GET", "/apps/conf/config/live")["env"]
    assert live["GREETING"] == "hello world" and live["APP"] == "conf"


def test_bad_config_set_changes_nothing(pikud: Pikud) -> None:
    pikud.add_app("strict", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/strict/deploy")
    before = pids(pikud, "strict")
    result = pikud.cli("config:set", "strict", "PIKU_STOP_TIMEOUT=soon")
    assert result.returncode == 1
    assert "PIKU_STOP_TIMEOUT" in result.stderr and "soon" in result.stderr
    assert not (pikud.root / "envs/strict/ENV").exists()
    assert pids(pikud, "strict") == before


HEALTH_SERVER = """\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer

BROKEN = os.environ.get("BROKEN") or os.path.exists("broken")     # as it was at start


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(500 if BROKEN else 200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


def deploy_checked_app(pikud: Pikud, name: str) -> Path:
    """A running HEALTH_SERVER app whose new processes must answer / below 500 within 1 s."""
    app = pikud.add_app(name, "web: python3 health.py\n",
                        FAST + "PIKU_HEALTHCHECK=/\nPIKU_READY_TIMEOUT=1\n")
    (app / "health.py").write_text(HEALTH_SERVER)
    pikud.api("POST", f"/apps/{name}/deploy")
    pikud.wait_state(name, f"{name}:web.1", "RUNNING")
    # An answer proves the server read BROKEN: RUNNING alone may come first on a busy machine.
    wait_for(lambda: pikud.get(name) == (200, "ok"), what=f"{name} answering 200")
    return app


def test_a_config_change_that_never_gets_ready_is_not_kept(pikud: Pikud) -> None:
    """The old generation serves on, and ENV is as before, so a reboot runs what runs now."""
    deploy_checked_app(pikud, "unready")
    pikud.cli("config:set", "unready", "GREETING=hi", check=True)
    before = pids(pikud, "unready")
    env_file = pikud.root / "envs/unready/ENV"
    assert env_file.read_text() == "GREETING=hi\n"

    result = pikud.cli("config:set", "unready", "BROKEN=1")
    assert result.returncode == 1
    assert "unready:web.1" in result.stderr and "500" in result.stderr, result.stderr
    assert env_file.read_text() == "GREETING=hi\n"
    assert pids(pikud, "unready") == before
    assert "BROKEN" not in pikud.api("GET", "/apps/unready/config/live")["env"]
    assert "BROKEN" not in pikud.cli("config", "unready", check=True).stdout


def test_a_scale_up_whose_new_copy_never_gets_ready_is_not_kept(pikud: Pikud) -> None:
    app = deploy_checked_app(pikud, "grow")
    before = pids(pikud, "grow")
    (app / "broken").write_text("")              # copies started from now on answer 500

    result = pikud.cli("ps:scale", "grow", "web=2")
    assert result.returncode == 1
    assert "grow:web.2" in result.stderr and "500" in result.stderr, result.stderr
    assert pids(pikud, "grow") == before
    assert not (pikud.root / "envs/grow/SCALING").exists()
    assert "the change was undone, SCALING is as it was" in pikud.log_text("grow", "pikud")
    assert pikud.get("grow") == (200, "ok")


def test_a_worker_config_change_that_fails_puts_the_workers_back(pikud: Pikud) -> None:
    """Its traffic too: the site's new name is not left routed."""
    app = pikud.add_app("picky", 'worker: test -z "$BROKEN" && sleep 300\nstatic: /:public\n',
                        FAST)
    (app / "public").mkdir()
    (app / "public" / "index.html").write_text("picky\n")
    pikud.api("POST", "/apps/picky/deploy")
    pikud.wait_state("picky", "picky:worker.1", "RUNNING")
    pikud.add_app("witness", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/witness/deploy")
    result = pikud.cli("config:set", "picky", "BROKEN=1", "NGINX_SERVER_NAME=new.example")
    assert result.returncode == 1 and "picky:worker.1" in result.stderr, result.stderr
    assert not (pikud.root / "envs/picky/ENV").exists()
    proc = pikud.wait_state("picky", "picky:worker.1", "RUNNING")
    environ = Path(f"/proc/{proc['pid']}/environ").read_bytes().split(b"\0")
    assert not any(word.startswith(b"BROKEN=") for word in environ)
    assert "BROKEN" not in pikud.api("GET", "/apps/picky/config/live")["env"]
    # The witness: an edit made after the config:set, which the watcher reports after
    # whatever it saw of picky's ENV (one inotify queue, the same settle time).
    (pikud.root / "envs/witness/ENV").write_text("GREETING=hi\n")
    wait_for(lambda: "ENV or SCALING edited" in pikud.log_text("witness", "pikud"), 10,
             "the watcher to see the witness's edit")
    assert pikud.process("picky", "picky:worker.1")["pid"] == proc["pid"]
    log = pikud.log_text("picky", "pikud")
    assert "the change was undone, ENV is as it was" in log
    assert "ENV or SCALING edited" not in log    # put back by the change, not by the watcher
    assert pikud.get("picky", host="new.example")[0] == 404
    assert pikud.get("picky") == (200, "picky\n")


def test_a_bad_nginx_value_set_by_config_is_refused_before_it_is_written(pikud: Pikud) -> None:
    # Not restarted by the change (PIKU_AUTO_RESTART=false): the check before the write refuses it.
    pikud.add_app("named", "worker: sleep 300\n", FAST + "PIKU_AUTO_RESTART=false\n")
    pikud.api("POST", "/apps/named/deploy")
    result = pikud.cli("config:set", "named", "NGINX_SERVER_NAME=a.example;evil")
    assert result.returncode == 1 and "NGINX_SERVER_NAME" in result.stderr, result.stderr
    assert not (pikud.root / "envs/named/ENV").exists()


def test_hand_edits_of_env_and_scaling_are_applied_and_bad_ones_ignored(pikud: Pikud) -> None:
    pikud.add_app("watched", "worker: echo color=$COLOR; sleep 300\n", FAST)
    pikud.api("POST", "/apps/watched/deploy")
    first = pids(pikud, "watched")
    env_file = pikud.root / "envs/watched/ENV"
    env_file.write_text("COLOR=blue\n")
    wait_for(lambda: "color=blue" in pikud.log_text("watched", "worker.1"), 10, "the edit")
    assert pids(pikud, "watched") != first
    applied = pids(pikud, "watched")
    env_file.write_text("COLOR=red\nthis line is broken\n")
    wait_for(lambda: "ignored an edit" in pikud.log_text("watched", "pikud"), 10, "the report")
    assert "envs/watched/ENV, line 2" in pikud.log_text("watched", "pikud")
    assert pids(pikud, "watched") == applied
    (pikud.root / "envs/watched/SCALING").write_text("worker: 2\n")     # ENV still broken
    wait_for(lambda: pikud.log_text("watched", "pikud").count("ignored an edit") >= 2, 10,
             "the second report")
    assert pids(pikud, "watched") == applied
    env_file.write_text("COLOR=red\n")
    wait_for(lambda: len(pids(pikud, "watched")) == 2, 10, "the scaling edit")
    wait_for(lambda: "color=red" in pikud.log_text("watched", "worker.2"), 10, "worker.2")


def test_touch_reload_restarts_the_app(pikud: Pikud) -> None:
    app = pikud.add_app("touchy", "worker: sleep 300\n", FAST + "PIKU_TOUCH_RELOAD=reload.txt\n")
    (app / "reload.txt").write_text("")
    pikud.api("POST", "/apps/touchy/deploy")
    first = pids(pikud, "touchy")
    os.utime(app / "reload.txt")
    wait_for(lambda: "touch-reload" in pikud.log_text("touchy", "pikud"), 10, "the reload")
    wait_for(lambda: pids(pikud, "touchy")["touchy:worker.1"] != first["touchy:worker.1"]
             and pikud.process("touchy", "touchy:worker.1")["state"] == "RUNNING", 10, "restart")


CHATTY = ("i=0; while :; do i=$((i+1)); echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; "
          "sleep 0.005; done")


def test_logs_rotate_and_follow_continues_across_a_rotation(pikud: Pikud) -> None:
    pikud.add_app("chatty", f"worker: {CHATTY}\n",
                  FAST + "PIKU_LOG_MAXSIZE=4K\nPIKU_LOG_BACKUPS=3\n")
    pikud.api("POST", "/apps/chatty/deploy")
    follower = subprocess.Popen([sys.executable, "-m", "pikud.cli", "logs", "chatty", "worker",
                                 "--lines", "1"], env=pikud.env, stdout=subprocess.PIPE,
                                text=True)
    try:
        seen: list[int] = []
        deadline = time.monotonic() + 15
        assert follower.stdout is not None
        while len(seen) < 300 and time.monotonic() < deadline:
            ready, _, _ = select.select([follower.stdout], [], [], 1)
            if ready:
                line = follower.stdout.readline()
                if "line-" in line:
                    seen.append(int(line.split("line-")[1].split("-")[0]))
    finally:
        follower.terminate()
        follower.wait(5)
        assert follower.stdout is not None
        follower.stdout.close()
    assert len(seen) >= 300, seen[-5:]
    assert seen == list(range(seen[0], seen[0] + len(seen)))     # no line lost or repeated
    logs = pikud.root / "logs/chatty"
    assert (logs / "worker.1.log.1").exists() and (logs / "worker.1.log.3").exists()
    assert not (logs / "worker.1.log.4").exists()
    assert all(p.stat().st_size <= 4096 for p in logs.glob("worker.1.log*"))
    first = (logs / "worker.1.log").read_text().splitlines()[0]
    assert first[:4].isdigit() and "T" in first.split()[0]     # an ISO timestamp


def test_config_set_without_auto_restart_waits_for_the_next_restart(pikud: Pikud) -> None:
    """PIKU_AUTO_RESTART=false: the file watcher does not apply what config:set wrote."""
    pikud.add_app("lazy", "worker: sleep 300\n", FAST + "PIKU_AUTO_RESTART=false\n")
    pikud.api("POST", "/apps/lazy/deploy")
    before = pikud.wait_state("lazy", "lazy:worker.1", "RUNNING")["pid"]
    pikud.add_app("witness", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/witness/deploy")
    pikud.cli("config:set", "lazy", "GREETING=hi", check=True)
    # The witness's edit comes after lazy's in the watcher's one queue.
    (pikud.root / "envs/witness/ENV").write_text("GREETING=hi\n")
    wait_for(lambda: "ENV or SCALING edited" in pikud.log_text("witness", "pikud"), 10,
             "the watcher to see the witness's edit")
    assert pikud.process("lazy", "lazy:worker.1")["pid"] == before
    assert "ENV or SCALING edited" not in pikud.log_text("lazy", "pikud")
    pikud.cli("restart", "lazy", check=True)
    assert pikud.api("GET", "/apps/lazy/config/live")["env"]["GREETING"] == "hi"
