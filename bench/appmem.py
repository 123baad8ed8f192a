#!/usr/bin/env python3
"""Memory per app against throughput: WSGI server settings side by side with uWSGI.

Each setup serves the same hello-world Flask app on 127.0.0.1 over HTTP, from
one virtualenv made with Debian's python3 (the one uWSGI's python3 plugin
embeds). The setups take turns (round-robin, a fresh start each round, one
server at a time): wrk -t2 -c20 straight at its port, and the PSS of the
server's whole process tree (main + workers) from /proc/PID/smaps_rollup,
idle (1 s after its first answer) and after the load. No nginx and no pikud
daemon: what is compared is the app server alone, whose settings pikud picks.

    python3 bench/appmem.py                 # every setup, 3 rounds of 10 s
    python3 bench/appmem.py --quick         # 1 round of 3 s
    python3 bench/appmem.py --only uwsgi --only granian-1x4-rt2

Needs uwsgi + uwsgi-plugin-python3 and wrk (Debian packages; bench/run wsgi
installs them) and the network or a wheel cache for flask, granian, gunicorn.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.measure import load_average, progress, read_text  # noqa: E402

APP = """\
from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return "Hello, world!"
"""
PORT = 18931


@dataclass(frozen=True)
class Setup:
    name: str
    argv: list[str]             # {venv} and {port} are filled in
    note: str
    stop: int = signal.SIGTERM


SETUPS = [
    Setup("uwsgi", ["uwsgi", "--plugin", "python3", "--master",
                    "--http11-socket", "127.0.0.1:{port}", "--module", "app:app",
                    "--virtualenv", "{venv}", "--processes", "2",
                    "--threads", "4", "--enable-threads", "--listen", "128",
                    "--disable-logging"],
          "uWSGI as piku runs it (master, 2 processes x 4 threads), without max-requests",
          signal.SIGINT),
    Setup("granian-2x4", ["{venv}/bin/granian", "--interface", "wsgi", "--host", "127.0.0.1",
                          "--port", "{port}", "--workers", "2", "--blocking-threads", "4",
                          "--no-ws", "--respawn-failed-workers", "app:app"],
          "pikud's default today: granian, 2 workers x 4 blocking threads"),
    Setup("granian-1x4", ["{venv}/bin/granian", "--interface", "wsgi", "--host", "127.0.0.1",
                          "--port", "{port}", "--workers", "1", "--blocking-threads", "4",
                          "--no-ws", "--respawn-failed-workers", "app:app"],
          "granian, 1 worker x 4 blocking threads"),
    Setup("granian-1x4-rt2", ["{venv}/bin/granian", "--interface", "wsgi", "--host",
                              "127.0.0.1", "--port", "{port}", "--workers", "1",
                              "--blocking-threads", "4", "--runtime-threads", "2", "--no-ws",
                              "--respawn-failed-workers", "app:app"],
          "granian, 1 worker x 4 blocking threads, 2 runtime (I/O) threads"),
    Setup("granian-2x4-rt2", ["{venv}/bin/granian", "--interface", "wsgi", "--host",
                              "127.0.0.1", "--port", "{port}", "--workers", "2",
                              "--blocking-threads", "4", "--runtime-threads", "2", "--no-ws",
                              "--respawn-failed-workers", "app:app"],
          "granian, 2 workers x 4 blocking threads, 2 runtime (I/O) threads each"),
    Setup("gunicorn-2x4", ["{venv}/bin/gunicorn", "--bind", "127.0.0.1:{port}", "--workers",
                           "2", "--threads", "4", "--no-control-socket", "app:app"],
          "gunicorn gthread, 2 workers x 4 threads (PIKU_WSGI_SERVER=gunicorn today)"),
    Setup("gunicorn-2x4-preload", ["{venv}/bin/gunicorn", "--bind", "127.0.0.1:{port}",
                                   "--workers", "2", "--threads", "4", "--preload",
                                   "--no-control-socket", "app:app"],
          "the same with --preload: the app imported once, workers forked (copy-on-write)"),
]


@dataclass
class Figures:
    setup: Setup
    rps: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0
    idle_pss_mib: list[float] = field(default_factory=list)  # 1 s after the first answer
    pss_mib: list[float] = field(default_factory=list)       # 1 s after its wrk round
    processes: list[tuple[str, float]] = field(default_factory=list)   # (comm, PSS MiB), last


def tree(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in os.listdir(f"/proc/{current}/task") if os.path.isdir(f"/proc/{current}") \
                else []:
            todo += [int(p) for p in (read_text(f"/proc/{current}/task/{task}/children")
                                      or "").split()]
    return found


def rollup(pid: int, key: str) -> float:
    for line in (read_text(f"/proc/{pid}/smaps_rollup") or "").splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def answering(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        return s.recv(64).split(b"\r\n")[0].endswith(b" 200 OK")
    return False


def wrk(port: int, seconds: int) -> tuple[float, float, int]:
    out = subprocess.run(["wrk", "-t2", "-c20", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out)[1])  # type: ignore[index]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    errors = sum(int(n) for n in re.findall(r"(?:Non-2xx or 3xx responses|"
                                            r"connect|read|write|timeout) (\d+)", out))
    return rps, float(p99[1]) * scale[p99[2]] if p99 else float("nan"), errors


def one_round(fig: Figures, venv: Path, work: Path, seconds: int) -> None:
    """Start the setup, wait for its first answer, take its idle PSS, warm it up, run one
    wrk round, take its PSS after the load, stop it."""
    setup = fig.setup
    argv = [word.format(venv=venv, port=PORT) for word in setup.argv]
    log = open(work / f"{setup.name}.log", "ab")   # noqa: SIM115 (closed in finally)
    env = dict(os.environ, PATH=f"{venv}/bin:{os.environ['PATH']}")
    proc = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not answering(PORT):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{setup.name} did not answer; see {work}/{setup.name}.log")
            time.sleep(0.1)
        time.sleep(1)
        fig.idle_pss_mib.append(sum(rollup(pid, "Pss") for pid in tree(proc.pid)))
        wrk(PORT, 2)                                    # warm-up
        rps, p99, errors = wrk(PORT, seconds)
        fig.rps.append(rps)
        fig.p99_ms.append(p99)
        fig.errors += errors
        time.sleep(1)
        pids = tree(proc.pid)
        fig.pss_mib.append(sum(rollup(pid, "Pss") for pid in pids))
        fig.processes = [((read_text(f"/proc/{pid}/comm") or "?").strip(), rollup(pid, "Pss"))
                         for pid in pids]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, setup.stop)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        wait_port_free(PORT)


def wait_port_free(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"port {port} still taken 30 s after the server stopped")


def make_venv(base: Path) -> Path:
    venv = base / "venv"
    subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True)
    subprocess.run([f"{venv}/bin/pip", "install", "--quiet", "flask", "granian", "gunicorn"],
                   check=True)
    return venv


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s")
    parser.add_argument("--only", action="append", choices=[s.name for s in SETUPS])
    parser.add_argument("--venv", type=Path, help="a virtualenv with flask, granian, gunicorn "
                        "(made with /usr/bin/python3); default: a fresh one")
    args = parser.parse_args()
    rounds, seconds = (1, 3) if args.quick else (args.rounds, args.seconds)
    setups = [s for s in SETUPS if not args.only or s.name in args.only]
    load_before = load_average()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="appmem-") as tmp:
        work = Path(tmp)
        (work / "app.py").write_text(APP)
        venv = args.venv or make_venv(work)
        figs = [Figures(setup) for setup in setups]
        # Round-robin (each setup once per round, a fresh start each time), so that the
        # load of a shared machine moves every column alike.
        for n in range(1, rounds + 1):
            for fig in figs:
                one_round(fig, venv, work, seconds)
                progress(f"round {n}/{rounds}: {fig.setup.name}: {fig.rps[-1]:,.0f} req/s, "
                         f"PSS idle {fig.idle_pss_mib[-1]:.1f} MiB, "
                         f"after load {fig.pss_mib[-1]:.1f} MiB")
    print(f"load average before {load_before}, after {load_average()}; "
          f"{time.monotonic() - started:.0f} s; {rounds} rounds, each a fresh start of every "
          f"setup in turn, a 2 s warm-up and {seconds} s of wrk -t2 -c20\n")
    print("| setup | req/s median (min - max) | p99 worst (ms) | errors | PSS idle, median "
          "(MiB) | PSS after load, median (MiB) | processes after the last round (PSS MiB) |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for fig in figs:
        procs = ", ".join(f"{name} {pss:.1f}" for name, pss in fig.processes)
        print(f"| {fig.setup.name} | {statistics.median(fig.rps):,.0f} ({min(fig.rps):,.0f} - "
              f"{max(fig.rps):,.0f}) | {max(fig.p99_ms):.1f} | {fig.errors} | "
              f"{statistics.median(fig.idle_pss_mib):.1f} | "
              f"{statistics.median(fig.pss_mib):.1f} | {procs} |")
    print()
    for fig in figs:
        print(f"- {fig.setup.name}: {fig.setup.note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
