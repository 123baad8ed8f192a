#!/usr/bin/env python3
"""Restarting pikud itself: a re-exec (SIGUSR2) against a stop and start (SIGTERM), in one run.

Run by ``bench/run reexec`` (``--quick`` for a smoke run). For each front, one
pikud in a temp PIKU_ROOT with one app of two web processes (a stdlib HTTP
server on the daemon's socket, fd 3):

- router: pikud's built-in router on a loopback port (``PIKU_PROXY=builtin``);
- nginx: a real nginx master on loopback ports (tests/nginx_master.py, as
  bench/wsgi.py starts it) serving the app's site (``PIKU_PROXY=nginx``).

A paced load of 200 requests a second (``Connection: close``, bench/wsgi.py's
``under_load``) runs through the front around each event:

- re-exec: ``kill -USR2`` and wait until the new image has adopted the app;
- SIGTERM-then-start (what restarting pikud meant before): ``kill -TERM``,
  wait for the exit (every app stopped), start ``pikud serve`` again and
  wait until the app answers.

Figures: failed requests, and the longest time between two answers a
client saw (target for the re-exec: under 50 ms). No timing is asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import pikud  # noqa: E402
from bench.measure import (  # noqa: E402
    cpu_model,
    fmt,
    load_average,
    pikud_source,
    print_report,
    progress,
    tables,
    wait_answering,
)
from bench.wsgi import HOST, EventRun, under_load  # noqa: E402  (the paced load)
from pikud.control.client import Client  # noqa: E402
from tests.integration.app_code import PID_SERVER  # noqa: E402  (a server on fd 3)
from tests.net import free_port  # noqa: E402
from tests.nginx_master import NGINX, NginxMaster  # noqa: E402
from tests.processes import stop_session  # noqa: E402
from tests.waiting import wait_for  # noqa: E402

DEADLINE = 60.0
FRONTS = ("router", "nginx")
EVENTS = ("reexec", "restart")


class Daemon:
    """One `pikud serve` behind ``front``, restarted in place or from scratch.

    ``port`` is where the load goes: the router's, or nginx's http port.
    """

    def __init__(self, root: Path, front: str) -> None:
        self.root, self.front = root, front
        self.client = Client(root / "pikud.sock", timeout=30)
        self.log = root / "pikud.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.nginx: NginxMaster | None = None
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PIKU")}
        self.app_env = ""
        if front == "router":
            self.port = free_port()
            self.env.update(PIKU_ROOT=str(root), PIKU_PROXY="builtin",
                            PIKU_HTTP_ADDRESS=f"127.0.0.1:{self.port}")
            return
        (root / "nginx").mkdir(parents=True)
        nginx = self.nginx = NginxMaster(root / "nginx-master", root / "nginx")
        self.port = nginx.http_port
        self.env.update(PIKU_ROOT=str(root), PIKU_PROXY="nginx")
        (root / "pikud.toml").write_text(
            f"nginx_test = {json.dumps([NGINX])}\n"
            f"nginx_reload = {json.dumps(nginx.reload_command)}\n"
            f"nginx_preamble = {json.dumps(nginx.preamble)}\n")
        self.app_env = ("NGINX_IPV4_ADDRESS=127.0.0.1\nDISABLE_IPV6=yes\n"
                        f"NGINX_HTTP_PORT={nginx.http_port}\n"
                        f"NGINX_HTTPS_PORT={nginx.https_port}\n")

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "pikud", "serve"], env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        wait_answering(self.client, self.alive, "pikud", DEADLINE)

    def alive(self) -> None:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text()

    def serving(self) -> None:
        """Until every web process of the app is RUNNING."""
        def up() -> bool:
            procs = self.client.request("GET", "/apps/bench")["processes"]
            return bool(procs) and all(p["state"] == "RUNNING" for p in procs)
        wait_for(up, DEADLINE, "the app to run", 0.02)

    def reexec(self) -> None:
        assert self.proc is not None
        before = self.log.read_text().count(" adopted ")
        self.proc.send_signal(signal.SIGUSR2)
        wait_for(lambda: self.log.read_text().count(" adopted ") > before, DEADLINE,
                 "the new image", 0.01)

    def restart(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(DEADLINE)
        self.start()
        self.serving()

    def stop(self) -> list[int]:
        """Stop pikud, then nginx; the pids of nginx's that had to be killed."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                stop_session(self.proc, signal.SIGTERM, DEADLINE)
        finally:
            left = self.nginx.stop() if self.nginx is not None else []
        return left


def deploy(daemon: Daemon) -> None:
    app = daemon.root / "apps" / "bench"
    app.mkdir(parents=True)
    (app / "Procfile").write_text("web: exec python3 server.py\n")
    (app / "ENV").write_text(f"PIKU_LISTEN_FDS=true\nNGINX_SERVER_NAME={HOST}\n"
                             "PIKU_START_SECS=0.3\nPIKU_STOP_TIMEOUT=3\n" + daemon.app_env)
    (app / "SCALING").write_text("web: 2\n")
    (app / "server.py").write_text(PID_SERVER)
    daemon.client.request("POST", "/apps/bench/deploy")
    daemon.serving()
    wait_for(lambda: answers(daemon.port), DEADLINE, f"the app through the {daemon.front}", 0.05)


def answers(port: int) -> bool:
    """One GET / with the app's Host on ``port`` is answered 200."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                         .encode())
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def measure(front: str, rounds: int, least: float) -> dict[str, list[EventRun]]:
    """``rounds`` of each event through ``front``, in its own temp PIKU_ROOT."""
    root = Path(tempfile.mkdtemp(prefix="pkr-", dir="/tmp"))
    root.chmod(0o755)           # nginx's workers (www-data when run as root) reach the app
    runs: dict[str, list[EventRun]] = {kind: [] for kind in EVENTS}
    daemon = Daemon(root, front)
    try:
        if daemon.nginx is not None:
            daemon.nginx.start()
        daemon.start()
        deploy(daemon)
        for n in range(rounds):
            for kind, event in zip(EVENTS, (daemon.reexec, daemon.restart), strict=True):
                progress(f"{front}: {kind} {n + 1}/{rounds}")
                runs[kind].append(under_load(daemon.port, event, before=1.0, after=2.0,
                                             least=least))
    finally:
        left = daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    if left:
        raise SystemExit(f"nginx left processes behind, killed: {left}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="events of each kind")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round, short load")
    args = parser.parse_args()
    rounds, least = (1, 3.0) if args.quick else (args.rounds, 6.0)
    started, load_before = time.perf_counter(), load_average()
    fronts = [f for f in FRONTS if f == "router" or os.path.exists(NGINX)]
    runs = {front: measure(front, rounds, least) for front in fronts}
    columns = [(front, kind) for front in fronts for kind in EVENTS]
    head = ["", *(f"{front}: {'re-exec (SIGUSR2)' if kind == 'reexec' else 'SIGTERM, then start'}"
                  for front, kind in columns)]
    body = []
    for label, figure, spec in (
            ("longest gap between answers, worst round (ms)",
             lambda r: max(x.longest_gap for x in r) * 1000, ".0f"),
            ("longest gap between answers, median round (ms)",
             lambda r: statistics.median(x.longest_gap for x in r) * 1000, ".0f"),
            ("failed / sent requests, all rounds",
             lambda r: f"{sum(x.failed for x in r)} / {sum(len(x.results) for x in r)}", ""),
            ("event: signal until back, median (s)",
             lambda r: statistics.median(x.event_end - x.event_start for x in r), ".2f")):
        body.append([label, *(fmt(figure(runs[front][kind]), spec) for front, kind in columns)])
    machine = (f"{os.cpu_count()} cores ({cpu_model()}), Python {sys.version.split()[0]}, "
               f"pikud {pikud.__version__} from {pikud_source(pikud.__file__)}")
    print_report(machine, args.quick, started, load_before, tables(head, body), __doc__ or "")


if __name__ == "__main__":
    main()
