"""WSGI serving behind nginx: pikud (granian, gunicorn) against the uWSGI emperor.

Run by ``bench/run wsgi``. One hello-world Flask app, three setups, one after
the other in one run, each behind its own fresh nginx master (the same nginx
binary, its own prefix, loopback ports only):

* pikud with its default server (granian), ``UWSGI_PROCESSES=2``, ``UWSGI_THREADS=4``;
* pikud with ``PIKU_WSGI_SERVER=gunicorn``, same settings;
* ``uwsgi --emperor DIR`` with the vassal piku writes for such an app (python3
  plugin, processes 2, threads 4, enable-threads, max-requests 1024, listen 48,
  a unix socket behind nginx's ``uwsgi_pass``).

pikud gets the app by ``git push`` over the local transport (flask comes from
PyPI through requirements.txt); the uWSGI vassal runs the same app.py from a
virtualenv with flask. Figures per setup: wrk throughput (3 rounds) with the
per-second successes nginx logged meanwhile (a stalled server hides from wrk's
averages, FACTS.md), failed requests and the longest gap between successes
under a paced 200 req/s load during a restart and during a code redeploy, and
the memory of the supervision machinery. Every process started here is
stopped in ``finally`` blocks, and the run fails if one is left.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.nginx_master import NGINX, NginxMaster  # noqa: E402  (the tests' nginx master)
from tests.processes import all_pids, proc_stat, stop_session  # noqa: E402

WRK = shutil.which("wrk") or "/usr/bin/wrk"
UWSGI = shutil.which("uwsgi") or "/usr/bin/uwsgi"
CLI = [sys.executable, "-m", "pikud.cli"]
HOST = "bench.example"
RATE = 200                       # requests a second during restarts and redeploys
ROUND_SECONDS = 10               # length of a wrk round (--seconds)

APP = '''\
from flask import Flask

VERSION = "{version}"
app = Flask(__name__)


@app.route("/")
def index():
    return "Hello from " + VERSION
'''


# --- small helpers --------------------------------------------------------------
def wait(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except (OSError, ValueError, KeyError):
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def run(argv: list[str], timeout: float = 300, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}):\n"
                           f"{result.stdout}{result.stderr}")
    return result


def get(port: int, timeout: float = 5, host: str = HOST) -> tuple[int, bytes]:
    """One GET / through nginx for the site of ``host``: (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def children(pid: int) -> list[int]:
    return [p for p in all_pids() if (fields := proc_stat(p)) and int(fields[1]) == pid]


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def with_environ(marker: bytes) -> list[int]:
    found = []
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    found.append(pid)
        except OSError:
            pass
    return found


def memory(pids: list[int]) -> tuple[float, float]:
    """RSS and PSS of ``pids`` together, MiB, from /proc/PID/smaps_rollup."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
        pss += int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))  # type: ignore[union-attr]
    return rss / 1024, pss / 1024


# --- nginx ------------------------------------------------------------------------
class Nginx(NginxMaster):
    """The setup's nginx master (tests/nginx_master.py): http {} includes ``sites``/*.conf,
    and its access log records every answer with its time, for per-second counts."""

    def __init__(self, base: Path, sites: Path) -> None:
        super().__init__(base / "nginx", sites, worker_connections=1024,
                         log_format="$msec $status", log_options="buffer=256k flush=1s")

    def per_second(self, start: float, end: float) -> tuple[list[int], int]:
        """2xx answers per whole second in [start, end), and the 5xx count (a 499 is
        wrk closing its connections at the end of a round, not an error)."""
        ok: dict[int, int] = {}
        bad = 0
        with open(self.access_log) as f:
            for line in f:
                stamp, status = line.split()
                t = float(stamp)
                if start <= t < end:
                    if status.startswith("2"):
                        ok[int(t)] = ok.get(int(t), 0) + 1
                    elif status.startswith("5"):
                        bad += 1
        seconds = range(int(start) + 1, int(end))        # whole seconds only
        return [ok.get(s, 0) for s in seconds], bad


# --- load -------------------------------------------------------------------------
@dataclass
class Result:
    sent: float
    done: float
    status: int               # -1: connection error or timeout
    body: bytes = b""


async def one_request(port: int, sent: float, timeout: float) -> Result:
    try:
        async def go() -> tuple[int, bytes]:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                             .encode())
                data = await reader.read(-1)
            finally:
                writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1]), body
        status, body = await asyncio.wait_for(go(), timeout)
    except (OSError, asyncio.TimeoutError, ValueError, IndexError):
        return Result(sent, time.monotonic(), -1)
    return Result(sent, time.monotonic(), status, body)


@dataclass
class EventRun:
    results: list[Result]
    event_start: float
    event_end: float
    event_error: str = ""

    @property
    def failed(self) -> int:
        return sum(1 for r in self.results if not 200 <= r.status < 300)

    @property
    def longest_gap(self) -> float:
        """Longest time between two 2xx answers (or from the last one to the end)."""
        done = sorted(r.done for r in self.results if 200 <= r.status < 300)
        if not done:
            return float("inf")
        end = max(r.done for r in self.results)
        return max([b - a for a, b in zip(done, done[1:])] + [end - done[-1]])

    @property
    def last_failure(self) -> float | None:
        """When the last failed request was sent, from the event's start."""
        times = [r.sent for r in self.results if not 200 <= r.status < 300]
        return max(times) - self.event_start if times else None

    def first_with(self, text: bytes) -> float | None:
        times = [r.done for r in self.results if 200 <= r.status < 300 and text in r.body]
        return min(times) - self.event_start if times else None

    def old_after_new(self, old: bytes, new: bytes) -> int:
        first_new = self.first_with(new)
        if first_new is None:
            return 0
        return sum(1 for r in self.results if r.sent - self.event_start > first_new
                   and old in r.body)


def under_load(port: int, event: Callable[[], None], before: float = 2.0, after: float = 5.0,
               least: float = 10.0, timeout: float = 10.0, cap: float = 75.0) -> EventRun:
    """Requests paced at RATE/s (Connection: close, at most 400 in flight) from
    ``before`` seconds before ``event`` runs until ``after`` seconds after it returned,
    at least ``least`` seconds in all, and until the last 2 s answered only 2xx (the
    server is back), but no longer than ``cap`` seconds after the event started."""
    async def main() -> EventRun:
        loop = asyncio.get_running_loop()
        tasks: list[asyncio.Task[Result]] = []
        limit = asyncio.Semaphore(400)
        box: dict[str, Any] = {}

        def fire() -> None:
            box["start"] = time.monotonic()
            try:
                event()
            except Exception as error:  # noqa: BLE001  (reported, the load goes on)
                box["error"] = str(error)[-500:]
            box["end"] = time.monotonic()

        async def bounded(sent: float) -> Result:
            async with limit:
                result = await one_request(port, sent, timeout)
            box["last_ok" if 200 <= result.status < 300 else "last_fail"] = result.done
            return result

        t0 = time.monotonic()
        runner: asyncio.Future[None] | None = None
        n = 0
        while True:
            now = time.monotonic()
            if runner is None and now - t0 >= before:
                runner = loop.run_in_executor(None, fire)
            if runner is not None and runner.done():
                back = (box.get("last_ok", 0) > box["end"]
                        and now - box.get("last_fail", 0) >= 2.0)
                if now >= max(box["end"] + after, t0 + least) and back:
                    break
                if now - box["start"] > cap:
                    break
            due = t0 + n / RATE
            if due > now:
                await asyncio.sleep(due - now)
                continue
            tasks.append(asyncio.create_task(bounded(due)))
            n += 1
        if runner is not None:
            await runner
        results = list(await asyncio.gather(*tasks))
        return EventRun(results, box.get("start", t0), box.get("end", t0), box.get("error", ""))
    return asyncio.run(main())


# --- wrk --------------------------------------------------------------------------
@dataclass
class WrkRound:
    rps: float
    p99_ms: float
    errors: int                # non-2xx/3xx answers plus socket errors
    start: float               # wall clock, for the nginx log
    end: float


def wrk_round(port: int, seconds: int) -> WrkRound:
    start = time.time()
    out = run([WRK, "-t2", "-c20", f"-d{seconds}s", "--latency", "-H", f"Host: {HOST}",
               f"http://127.0.0.1:{port}/"], timeout=seconds + 60).stdout
    end = time.time()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    p99_ms = (float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)]
              if p99 else float("nan"))
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                      out):
        errors += sum(int(x) for x in m.groups())
    return WrkRound(rps, p99_ms, errors, start, end)


# --- the setups -------------------------------------------------------------------
@dataclass
class Figures:
    name: str
    rounds: list[WrkRound] = field(default_factory=list)
    per_second: list[int] = field(default_factory=list)
    log_non2xx: int = 0
    restart: EventRun | None = None
    redeploy: EventRun | None = None
    supervisor: tuple[float, float] = (0.0, 0.0)
    servers: tuple[float, float] = (0.0, 0.0)
    notes: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)


def measure(fig: Figures, nginx: Nginx, args: argparse.Namespace,
            restart: Callable[[], None], redeploy: Callable[[], None]) -> None:
    """The common part: wrk rounds, then a restart and a redeploy under paced load."""
    wait(lambda: get(nginx.http_port)[0] == 200, 60, f"{fig.name} answering through nginx")
    wrk_round(nginx.http_port, 2)                              # warm-up, not counted
    for _ in range(args.rounds):
        fig.rounds.append(wrk_round(nginx.http_port, args.seconds))
    fig.restart = under_load(nginx.http_port, restart, least=args.load_seconds)
    fig.redeploy = under_load(nginx.http_port, redeploy, least=args.load_seconds)


def read_log(fig: Figures, nginx: Nginx) -> None:
    """After nginx stopped (its log is flushed): per-second successes during wrk."""
    for r in fig.rounds:
        counts, bad = nginx.per_second(r.start, r.end)
        fig.per_second += counts
        fig.log_non2xx += bad


def commit_app(work: Path, version: str, env: str) -> None:
    (work / "app.py").write_text(APP.format(version=version))
    (work / "requirements.txt").write_text("flask\n")
    (work / "Procfile").write_text("wsgi: app:app\n")
    (work / "ENV").write_text(env)
    run(["git", "-C", str(work), "add", "-A"])
    run(["git", "-C", str(work), "commit", "--quiet", "-m", f"version {version}"])


def pikud_root(base: Path, nginx: Nginx) -> tuple[Path, dict[str, str]]:
    """PIKU_ROOT for a pikud behind ``nginx`` (pikud.toml points it there) and its environment."""
    root = base / "root"
    (root / "nginx").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIKU")}
    env.update(PIKU_ROOT=str(root), PIKU_PROXY="nginx")
    (root / "pikud.toml").write_text(
        f"nginx_test = {json.dumps([NGINX])}\n"
        f"nginx_reload = {json.dumps(nginx.reload_command)}\n"
        f"nginx_preamble = {json.dumps(nginx.preamble)}\n")
    return root, env


def app_settings(nginx: Nginx, server: str | None, host: str = HOST,
                 piku_tuning: bool = True) -> str:
    """The app's ENV: its site ``host`` on ``nginx``'s loopback ports; with ``piku_tuning``
    piku's 2 processes x 4 threads, else pikud's own defaults."""
    return (f"NGINX_SERVER_NAME={host}\nNGINX_IPV4_ADDRESS=127.0.0.1\nDISABLE_IPV6=yes\n"
            f"NGINX_HTTP_PORT={nginx.http_port}\nNGINX_HTTPS_PORT={nginx.https_port}\n"
            + ("UWSGI_PROCESSES=2\nUWSGI_THREADS=4\n" if piku_tuning else "")
            + (f"PIKU_WSGI_SERVER={server}\n" if server else ""))


def work_tree(work: Path, receivepack: str) -> None:
    """A git work tree whose remote ``piku`` pushes over the local transport."""
    work.mkdir()
    run(["git", "-C", str(work), "init", "--quiet", "--initial-branch=main"])
    run(["git", "-C", str(work), "config", "user.email", "bench@example.invalid"])
    run(["git", "-C", str(work), "config", "user.name", "Bench"])
    run(["git", "-C", str(work), "remote", "add", "piku", "bench"])
    run(["git", "-C", str(work), "config", "remote.piku.receivepack", receivepack])


def start_pikud(root: Path, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """``pikud serve`` in its own session, once its control socket answers."""
    daemon = subprocess.Popen([sys.executable, "-m", "pikud", "serve"], env=env,
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        if daemon.poll() is not None:
            raise RuntimeError(f"pikud exited ({daemon.returncode}); see its log")
        return (root / "pikud.sock").exists() and subprocess.run(
            [*CLI, "apps"], env=env, capture_output=True).returncode == 0
    wait(up, 30, "pikud")
    return daemon


def stop_pikud(notes: list[str], daemon: subprocess.Popen[bytes] | None, root: Path) -> None:
    """SIGTERM to pikud, then SIGKILL of anything of PIKU_ROOT left; noted when there is."""
    if daemon is not None:
        killed = stop_session(daemon, signal.SIGTERM, 60)
        if daemon.returncode not in (0, None):
            notes.append(f"pikud exited with status {daemon.returncode}")
        if killed:
            notes.append(f"LEFT BEHIND in pikud's session, killed: {killed}")
    left = with_environ(f"PIKU_ROOT={root}".encode())
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    if left:
        notes.append(f"LEFT BEHIND by pikud, killed: {left}")


def pikud_setup(name: str, server: str | None, args: argparse.Namespace) -> Figures:
    fig = Figures(name)
    base = Path(tempfile.mkdtemp(prefix="pkw-", dir="/tmp"))
    base.chmod(0o755)
    nginx = Nginx(base, base / "root" / "nginx")
    root, env = pikud_root(base, nginx)
    app_env = app_settings(nginx, server)
    work = base / "work"
    work_tree(work, " ".join(CLI) + " git-receive-pack")
    log = open(base / "pikud.log", "wb")
    daemon: subprocess.Popen[bytes] | None = None
    try:
        nginx.start()
        daemon = start_pikud(root, env, log)
        commit_app(work, "v1", app_env)
        started = time.monotonic()
        run(["git", "-C", str(work), "push", "--quiet", "piku", "main"], env=env, timeout=600)
        fig.notes.append(f"first push (new virtualenv, flask from PyPI): "
                         f"{time.monotonic() - started:.1f} s")

        def restart() -> None:
            run([*CLI, "restart", "bench"], env=env, timeout=120)

        def redeploy() -> None:
            commit_app(work, "v2", app_env)
            run(["git", "-C", str(work), "push", "--quiet", "piku", "main"], env=env,
                timeout=300)
        measure(fig, nginx, args, restart, redeploy)
        fig.supervisor = memory([daemon.pid])
        fig.servers = memory(descendants(daemon.pid))
        venv_python = next((root / "envs" / "bench").glob("*/bin/python"),
                           root / "envs" / "bench" / "bin" / "python")
        for package in ("flask", server or "granian"):
            fig.versions[package] = subprocess.run(
                [str(venv_python), "-c", "import importlib.metadata as m, sys;"
                 "print(m.version(sys.argv[1]))", package],
                capture_output=True, text=True).stdout.strip() or "?"
    finally:
        try:
            stop_pikud(fig.notes, daemon, root)
        finally:
            log.close()
            stop_nginx(fig.notes, nginx)
    return finish(fig, nginx, base, args)


def stop_nginx(notes: list[str], nginx: Nginx) -> None:
    leftovers = nginx.stop()
    if leftovers:
        notes.append(f"LEFT BEHIND by nginx, killed: {leftovers}")


def finish(fig: Figures, nginx: Nginx, base: Path, args: argparse.Namespace) -> Figures:
    """Read nginx's access log into the figures, then remove the setup's folder."""
    read_log(fig, nginx)
    if args.keep:
        print(f"kept {base}", file=sys.stderr)
    else:
        shutil.rmtree(base, ignore_errors=True)
    return fig


def piku_site(sock: Path, port: int, app: str = "bench") -> str:
    """The nginx site piku writes for a wsgi app: uwsgi_pass to the vassal's socket; its
    server name is ``app``.example."""
    return f"""\
upstream {app} {{
    server unix:{sock};
}}
server {{
    listen 127.0.0.1:{port};
    server_name {app}.example;
    gzip on;
    gzip_vary on;
    gzip_proxied any;
    gzip_min_length 1024;
    gzip_types text/plain text/css text/xml text/javascript application/javascript application/json application/xml application/rss+xml image/svg+xml;
    add_header X-Deployed-By Piku;
    location / {{
        uwsgi_pass {app};
        include /etc/nginx/uwsgi_params;
        uwsgi_param HTTP_X_FORWARDED_FOR $proxy_add_x_forwarded_for;
        uwsgi_param HTTP_X_REAL_IP $remote_addr;
        uwsgi_param HTTP_X_FORWARDED_PROTO $scheme;
    }}
}}
"""


def piku_vassal(app_dir: Path, venv: Path, sock: Path, logs: Path, app: str = "bench") -> str:
    """The vassal piku writes for `wsgi: app:app` of ``app`` with its defaults."""
    return f"""\
[uwsgi]
chdir = {app_dir}
master = true
project = {app}
max-requests = 1024
listen = 48
processes = 2
procname-prefix = {app}:wsgi:
enable-threads = true
log-x-forwarded-for = false
log-maxsize = 1048576
logto2 = {logs}/{app}.wsgi.1.log
log-backupname = {logs}/{app}.wsgi.1.log.old
virtualenv = {venv}
module = app:app
threads = 4
plugin = python3
socket = {sock}
chmod-socket = 666
"""


def uwsgi_setup(args: argparse.Namespace, flask_venv: Path) -> Figures:
    fig = Figures("uWSGI emperor")
    base = Path(tempfile.mkdtemp(prefix="pkw-", dir="/tmp"))
    base.chmod(0o755)
    sites = base / "sites"
    vassals = base / "uwsgi-enabled"
    app_dir = base / "app"
    for folder in (sites, vassals, app_dir):
        folder.mkdir()
    sock = base / "bench.sock"
    nginx = Nginx(base, sites)
    (app_dir / "app.py").write_text(APP.format(version="v1"))
    (sites / "bench.conf").write_text(piku_site(sock, nginx.http_port))
    ini = vassals / "bench_wsgi.1.ini"
    ini.write_text(piku_vassal(app_dir, flask_venv, sock, base))
    emperor: subprocess.Popen[bytes] | None = None
    try:
        nginx.start()
        emperor = start_emperor(vassals, base / "emperor.log")

        def restart() -> None:
            os.utime(ini)

        def redeploy() -> None:
            (app_dir / "app.py").write_text(APP.format(version="v2"))
            os.utime(ini)
        measure(fig, nginx, args, restart, redeploy)
        masters = children(emperor.pid)
        fig.supervisor = memory([emperor.pid, *masters])
        fig.servers = memory([w for m in masters for w in descendants(m)])
        fig.versions["uwsgi"] = run([UWSGI, "--version"]).stdout.strip()
        log = (base / "bench.wsgi.1.log").read_text(errors="replace")
        stuck = log.count("MERCY") + log.count("mercy")
        if stuck:
            fig.notes.append(f"uWSGI log: {stuck} line(s) about mercy kills "
                             "(workers stuck at max-requests recycling)")
    finally:
        try:
            stop_emperor(fig.notes, emperor)
        finally:
            stop_nginx(fig.notes, nginx)
    return finish(fig, nginx, base, args)


def start_emperor(vassals: Path, log: Path) -> subprocess.Popen[bytes]:
    """``uwsgi --emperor`` on the folder of vassals, in its own session."""
    return subprocess.Popen([UWSGI, "--emperor", str(vassals), "--logto", str(log)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT, start_new_session=True)


def stop_emperor(notes: list[str], emperor: subprocess.Popen[bytes] | None) -> None:
    """SIGINT to the emperor (it stops its vassals), then SIGKILL of what is left."""
    if emperor is not None:
        killed = stop_session(emperor, signal.SIGINT, 10)
        if killed:
            notes.append(f"uWSGI processes killed after SIGINT: {killed}")


def flask_virtualenv(base: Path) -> Path:
    """A virtualenv with flask for the vassal, made by the python3 the uWSGI plugin embeds
    (Debian's /usr/bin/python3 for Debian's plugin)."""
    python = "/usr/bin/python3" if UWSGI.startswith("/usr/bin") else sys.executable
    venv = base / "venv"
    run([python, "-m", "venv", str(venv)])
    run([str(venv / "bin" / "pip"), "install", "--quiet", "flask"], timeout=300)
    return venv


# --- report -----------------------------------------------------------------------
def table(figs: list[Figures]) -> list[tuple[str, list[str]]]:
    def fmt_run(run_: EventRun | None, what: str) -> str:
        if run_ is None:
            return "-"
        if what == "failed":
            return f"{run_.failed} / {len(run_.results)}"
        if what == "gap":
            return f"{run_.longest_gap * 1000:.0f}"
        if what == "last":
            t = run_.last_failure
            return "-" if t is None else f"{t:+.2f}"
        if what == "time":
            return f"{run_.event_end - run_.event_start:.2f}"
        if what == "new":
            t = run_.first_with(b"v2")
            return "never" if t is None else f"{t:.2f}"
        return "-"

    rows: list[tuple[str, list[str]]] = []
    add = rows.append
    add((f"req/s through nginx, wrk -t2 -c20 {len(figs[0].rounds)} x {ROUND_SECONDS} s: median",
         [f"{statistics.median(r.rps for r in f.rounds):,.0f}" for f in figs]))
    add(("req/s: min - max of the rounds",
         [f"{min(r.rps for r in f.rounds):,.0f} - {max(r.rps for r in f.rounds):,.0f}"
          for f in figs]))
    add(("wrk latency p99, worst round (ms)", [f"{max(r.p99_ms for r in f.rounds):.1f}"
                                               for f in figs]))
    add(("wrk errors (non-2xx + socket errors), all rounds",
         [str(sum(r.errors for r in f.rounds)) for f in figs]))
    add(("2xx per second in nginx's log during wrk: lowest second",
         [f"{min(f.per_second):,}" if f.per_second else "-" for f in figs]))
    add(("seconds with under 10% of the median 2xx/s (of all wrk seconds)",
         [f"{sum(1 for c in f.per_second if c < 0.1 * statistics.median(f.per_second))}"
          f" of {len(f.per_second)}" if f.per_second else "-" for f in figs]))
    add(("5xx answers in nginx's log during wrk", [str(f.log_non2xx) for f in figs]))
    add((f"restart under {RATE} req/s: failed / sent", [fmt_run(f.restart, "failed")
                                                        for f in figs]))
    add(("restart: longest gap between 2xx (ms)", [fmt_run(f.restart, "gap") for f in figs]))
    add(("restart: last failed request sent at (s from the event)",
         [fmt_run(f.restart, "last") for f in figs]))
    add(("restart: command took (s)", [fmt_run(f.restart, "time") for f in figs]))
    add((f"redeploy under {RATE} req/s: failed / sent", [fmt_run(f.redeploy, "failed")
                                                         for f in figs]))
    add(("redeploy: longest gap between 2xx (ms)", [fmt_run(f.redeploy, "gap") for f in figs]))
    add(("redeploy: last failed request sent at (s from the event)",
         [fmt_run(f.redeploy, "last") for f in figs]))
    add(("redeploy: push / touch took (s)", [fmt_run(f.redeploy, "time") for f in figs]))
    add(("redeploy: new code answered after (s)", [fmt_run(f.redeploy, "new") for f in figs]))
    add(("supervision RSS (MiB): pikud daemon; emperor + vassal master",
         [f"{f.supervisor[0]:.1f}" for f in figs]))
    add(("supervision PSS (MiB)", [f"{f.supervisor[1]:.1f}" for f in figs]))
    add(("app server processes PSS (MiB, for context)", [f"{f.servers[1]:.1f}" for f in figs]))
    return rows


def report(figs: list[Figures], info: list[str]) -> None:
    rows = table(figs)
    names = [f.name for f in figs]
    width = max(len(r[0]) for r in rows)
    cols = [max(len(n), *(len(r[1][i]) for r in rows)) for i, n in enumerate(names)]
    print()
    for line in info:
        print(line)
    print()
    print(" " * width + "  " + "  ".join(n.rjust(c) for n, c in zip(names, cols)))
    for label, values in rows:
        print(label.ljust(width) + "  " + "  ".join(v.rjust(c) for v, c in zip(values, cols)))
    print()
    print("|  | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for label, values in rows:
        print(f"| {label} | " + " | ".join(values) + " |")
    print()
    for f in figs:
        for run_, what in ((f.restart, "restart"), (f.redeploy, "redeploy")):
            if run_ is not None and run_.event_error:
                print(f"{f.name}: the {what} command failed: {run_.event_error}")
            if run_ is not None and run_.failed:
                kinds: dict[int, int] = {}
                for r in run_.results:
                    if not 200 <= r.status < 300:
                        kinds[r.status] = kinds.get(r.status, 0) + 1
                when = [round(r.sent - run_.event_start, 2) for r in run_.results
                        if not 200 <= r.status < 300]
                print(f"{f.name}: {what} failures by status (-1 = connection error/timeout): "
                      f"{kinds}; sent at {when[0]:+.2f} .. {when[-1]:+.2f} s from the event")
        if f.redeploy is not None and (n := f.redeploy.old_after_new(b"v1", b"v2")):
            print(f"{f.name}: {n} requests sent after v2 first answered still got v1")
        for note in f.notes:
            print(f"{f.name}: {note}")


def machine_info(figs: list[Figures], elapsed: float, load_before: str) -> list[str]:
    versions: dict[str, str] = {}
    for f in figs:
        versions.update(f.versions)
    nginx_v = subprocess.run([NGINX, "-v"], capture_output=True, text=True).stderr.strip()
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    uwsgi_v = versions.pop("uwsgi", "-")
    wrk_v = subprocess.run([WRK, "-v"], capture_output=True, text=True)
    wrk_line = (wrk_v.stdout + wrk_v.stderr).splitlines()[0] if (wrk_v.stdout + wrk_v.stderr) \
        else "wrk"
    return [
        f"{platform.node()}: {os.cpu_count()} cores (nproc), Linux {platform.release()}, "
        f"load average {load_before} before, {os.getloadavg()[0]:.2f} after; "
        f"run took {elapsed:.0f} s",
        f"{nginx_v.replace('nginx version: ', '')}, uWSGI {uwsgi_v}, "
        + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
        + f", {wrk_line.split(' [')[0]}, pikud at {commit}, "
        f"CPython {platform.python_version()} (pikud)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per setup")
    parser.add_argument("--seconds", type=int, default=10, help="length of a wrk round")
    parser.add_argument("--load-seconds", type=float, default=10.0,
                        help="least length of the paced load around a restart/redeploy")
    parser.add_argument("--only", action="append", choices=("granian", "gunicorn", "uwsgi"),
                        help="run only these setups (repeatable)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders (logs)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round of 3 s, 6 s of load")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.seconds, args.load_seconds = 1, 3, 6.0
    global ROUND_SECONDS
    ROUND_SECONDS = args.seconds
    for tool in (NGINX, WRK) + ((UWSGI,) if not args.only or "uwsgi" in args.only else ()):
        if not os.access(tool, os.X_OK):
            raise SystemExit(f"{tool} is missing (bench/run wsgi installs nginx, wrk and uwsgi "
                             "from Debian when run as root)")
    only = args.only or ["granian", "gunicorn", "uwsgi"]
    load_before = f"{os.getloadavg()[0]:.2f}"
    started = time.monotonic()
    figs: list[Figures] = []
    scratch = Path(tempfile.mkdtemp(prefix="pkw-venv-", dir="/tmp"))
    scratch.chmod(0o755)
    try:
        for which in only:
            print(f"-----> {which}", file=sys.stderr, flush=True)
            t = time.monotonic()
            if which == "granian":
                figs.append(pikud_setup("pikud (granian)", None, args))
            elif which == "gunicorn":
                figs.append(pikud_setup("pikud (gunicorn)", "gunicorn", args))
            else:
                figs.append(uwsgi_setup(args, flask_virtualenv(scratch)))
            print(f"       {time.monotonic() - t:.0f} s", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    elapsed = time.monotonic() - started
    report(figs, machine_info(figs, elapsed, load_before))
    left = [p for p in all_pids() if (s := proc_stat(p)) and s[0] != "Z"
            and b"/tmp/pkw-" in cmdline(p)]
    if left:
        raise SystemExit(f"processes left behind: {left}")


if __name__ == "__main__":
    main()
