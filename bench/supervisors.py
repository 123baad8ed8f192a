#!/usr/bin/env python3
"""pikud (nginx), pikud (nginx, --loop uvloop), pikud (router), pikud (router, --loop
asyncio) and supervisord, side by side in one run.

"nginx" is pikud as installed with nginx (PIKU_PROXY=nginx: no built-in router, so
no aiohttp in the daemon), on the loop it picks there, stock asyncio without ssl;
its `--loop uvloop` column shows what uvloop would cost a daemon that only
supervises. "router" is pikud serving HTTP itself (PIKU_PROXY=builtin), on the
loop it picks there, uvloop. The apps here have no web process, so nginx itself
is not involved: the rows differ by what the daemon loads and runs.

Each configuration runs alone (never two daemons at once), in its own temp dir,
in sessions with a fresh daemon each:

  A. start (3 runs, the rows are medians): 50 groups x 10 `sleep 3600` processes
     (pikud: apps with `worker: sleep 3600` and SCALING `worker: 10`, deployed by
     concurrent POST /apps/NAME/deploy; supervisord: programs with numprocs=10,
     started by supervisor.startAllProcesses(), i.e. `supervisorctl start all`);
     after the last run, the time for the daemon to stop them all on SIGTERM.
  B. steady: 100 apps x 2 processes: RSS, idle CPU and wakeups, CLI round
     trip, then respawn latency after kill -9 of the app's `sleep` process.

The observer never asks the daemon while it measures start and respawn: it
reads /proc (the daemon's children, and their children when the command runs
under `/bin/sh -c`). Run it through bench/run, which makes bench/.venv.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import ctypes
import math
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

try:
    import pikud
    from pikud.control.client import Client
    import supervisor.xmlrpc
except ImportError as exc:  # pragma: no cover - a usage error
    sys.exit(f"supervisors.py: {exc}; run it with bench/run (it makes bench/.venv)")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.waiting import wait_for  # noqa: E402  (the tests' deadline helper)
from bench.measure import (CLK_TCK, cpu_model, fmt, percentile, pikud_source,  # noqa: E402
                           load_average, print_report, progress, read_text, tables, usage,
                           wait_answering)

BIN = Path(sys.executable).parent          # the venv's bin: piku, supervisord, supervisorctl
STARTUP_DEADLINE = 30.0
PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class Sizes:
    start_groups: int           # session A: groups x per_group processes
    start_per_group: int
    steady_groups: int          # session B: groups x 2 processes
    steady_per_group: int
    kills: int
    idle_secs: float
    cli_runs: int
    start_reps: int             # session A runs; the start rows are medians

    @property
    def start_total(self) -> int:
        return self.start_groups * self.start_per_group

    @property
    def steady_total(self) -> int:
        return self.steady_groups * self.steady_per_group


FULL = Sizes(50, 10, 100, 2, 100, 30.0, 20, 3)
QUICK = Sizes(5, 10, 25, 2, 20, 5.0, 5, 1)


# --- /proc ------------------------------------------------------------------

def children(pid: int) -> set[int]:
    """Direct children of every thread of ``pid``."""
    found: set[int] = set()
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tids:
        text = read_text(f"/proc/{pid}/task/{tid}/children")
        if text:
            found.update(int(p) for p in text.split())
    return found


def comm(pid: int) -> str | None:
    text = read_text(f"/proc/{pid}/comm")
    return text.strip() if text is not None else None


def alive(pid: int) -> bool:
    text = read_text(f"/proc/{pid}/stat")
    return text is not None and text.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class AppFinder:
    """The `sleep` process of each direct child of a daemon (the child itself, or a
    child of it when the daemon runs the command under `/bin/sh -c`)."""

    def __init__(self, daemon_pid: int, app_comm: str = "sleep") -> None:
        self.daemon_pid = daemon_pid
        self.app_comm = app_comm
        self.apps: dict[int, int] = {}          # direct child -> its app process

    def scan(self) -> dict[int, int]:
        kids = children(self.daemon_pid)
        for gone in self.apps.keys() - kids:
            del self.apps[gone]
        for kid in kids - self.apps.keys():
            name = comm(kid)
            if name == self.app_comm:
                self.apps[kid] = kid
            elif name is not None:
                for grandchild in children(kid):
                    if comm(grandchild) == self.app_comm:
                        self.apps[kid] = grandchild
                        break
        return self.apps


def rss_bytes(pid: int) -> int:
    for line in (read_text(f"/proc/{pid}/status") or "").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ProcessLookupError(pid)


def tagged_processes(tag: str) -> set[int]:
    """Live pids whose environment holds BENCH_ROOT=<tag> (everything a session started)."""
    needle = f"\0BENCH_ROOT={tag}\0".encode()
    me = os.getpid()
    found = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = b"\0" + f.read() + b"\0"
        except OSError:
            continue
        if needle in env and alive(int(entry.name)):
            found.add(int(entry.name))
    return found


# --- the daemons ------------------------------------------------------------

class Daemon:
    """What the benchmark needs from a supervisor; one instance per session."""

    label = ""

    def __init__(self, root: Path, groups: int, per_group: int, sizes: Sizes) -> None:
        self.root = root
        self.groups = groups
        self.per_group = per_group
        self.proc: subprocess.Popen[bytes] | None = None
        self.names = [f"app{i:03d}" for i in range(1, groups + 1)]

    @property
    def total(self) -> int:
        return self.groups * self.per_group

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PIKU", "SUPERVISOR"))}
        env["BENCH_ROOT"] = str(self.root)
        return env

    def _popen(self, argv: list[str], env: dict[str, str]) -> None:
        log = open(self.root / "daemon.log", "ab")
        try:
            self.proc = subprocess.Popen(argv, env=env, cwd=self.root, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        finally:
            log.close()

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (self.root / "daemon.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{tail}")

    # what each supervisor does its own way
    def setup(self) -> None:
        raise NotImplementedError

    def start_daemon(self) -> None:
        raise NotImplementedError

    def start_all(self) -> None:
        raise NotImplementedError

    def all_running(self) -> bool:
        raise NotImplementedError

    def cli_argv(self, group: str) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def verify_after_kills(self, kills: int) -> str:
        raise NotImplementedError

    def kill_daemon(self) -> None:
        """SIGKILL the daemon's process group (its children are killed by the caller)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop_daemon(self, timeout: float = 120.0) -> float:
        """SIGTERM, wait for the exit; returns the seconds it took (SIGKILL after timeout).

        The exit is seen on a pidfd, at once: Popen.wait(timeout) polls, at last every
        50 ms, which made every stop time a multiple of 50 ms (plus 14)."""
        if self.proc is None:
            return 0.0
        exited = select.poll()
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            exited.register(pidfd, select.POLLIN)
            t0 = time.perf_counter()
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            took = time.perf_counter() - t0 if exited.poll(timeout * 1000) else math.nan
        finally:
            os.close(pidfd)
        if math.isnan(took):
            progress(f"{self.label}: did not exit {timeout:g}s after SIGTERM; SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        return took


class Pikud(Daemon):
    def __init__(self, root: Path, groups: int, per_group: int, sizes: Sizes, loop: str,
                 command: str, proxy: str) -> None:
        super().__init__(root, groups, per_group, sizes)
        self.loop = loop
        self.command = command
        self.proxy = proxy
        front = "router" if proxy == "builtin" else proxy
        self.label = f"pikud ({front})" if loop == "auto" else f"pikud ({front}, --loop {loop})"
        self.client = Client(root / "pikud.sock", timeout=300)

    def env(self) -> dict[str, str]:
        """PIKU_PROXY: nginx (no router) or builtin (the router, on a free port)."""
        return dict(super().env(), PIKU_ROOT=str(self.root), PIKU_HTTP_ADDRESS="127.0.0.1:0",
                    PIKU_PROXY=self.proxy)

    def setup(self) -> None:
        for name in self.names:
            app = self.root / "apps" / name
            app.mkdir(parents=True)
            (app / "Procfile").write_text(f"worker: {self.command}\n")
            # Same policy as supervisord's startsecs=0: RUNNING once spawned, respawn at once.
            (app / "ENV").write_text("PIKU_START_SECS=0\nPIKU_STOP_TIMEOUT=5\n")
            envs = self.root / "envs" / name
            envs.mkdir(parents=True)
            (envs / "SCALING").write_text(f"worker: {self.per_group}\n")

    def start_daemon(self) -> None:
        self._popen([sys.executable, "-m", "pikud", "serve", "--loop", self.loop], self.env())
        wait_answering(self.client, self.check_alive, self.label, STARTUP_DEADLINE)

    def start_all(self) -> None:
        """One POST /apps/NAME/deploy per app, all at once; each returns when its
        processes have left STARTING."""
        def deploy(name: str) -> None:
            Client(self.root / "pikud.sock", timeout=300).request("POST", f"/apps/{name}/deploy")
        with concurrent.futures.ThreadPoolExecutor(len(self.names)) as pool:
            for result in [pool.submit(deploy, n) for n in self.names]:
                result.result()

    def all_running(self) -> bool:
        apps = self.client.request("GET", "/apps")["apps"]
        return sum(a["processes"].get("RUNNING", 0) for a in apps) == self.total

    def cli_argv(self, group: str) -> tuple[list[str], dict[str, str]]:
        return [str(BIN / "piku"), "ps", group], self.env()

    def verify_after_kills(self, kills: int) -> str:
        restarts = running = 0
        for name in self.names:
            for p in self.client.request("GET", f"/apps/{name}")["processes"]:
                restarts += p["restarts"]
                running += p["state"] == "RUNNING" and p["pid"] is not None
        if running != self.total or restarts != kills:
            raise RuntimeError(f"{self.label}: after {kills} kills: {running}/{self.total} "
                               f"RUNNING, {restarts} restarts counted")
        return f"{running}/{self.total} RUNNING, {restarts} restarts counted"


class Supervisord(Daemon):
    label = "supervisord"

    def __init__(self, root: Path, groups: int, per_group: int, sizes: Sizes,
                 command: str) -> None:
        super().__init__(root, groups, per_group, sizes)
        self.command = command
        self.conf = root / "supervisord.conf"
        self.sock = root / "supervisor.sock"

    def rpc(self) -> Any:
        transport = supervisor.xmlrpc.SupervisorTransport(None, None, f"unix://{self.sock}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)

    def setup(self) -> None:
        (self.root / "logs").mkdir()
        lines = [
            "[unix_http_server]", f"file={self.sock}", "chmod=0700", "",
            "[supervisord]", "nodaemon=true", f"logfile={self.root}/supervisord.log",
            f"pidfile={self.root}/supervisord.pid", f"childlogdir={self.root}/logs",
            "loglevel=info", "minfds=4096", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl=unix://{self.sock}", "",
        ]
        for name in self.names:
            lines += [
                f"[program:{name}]", f"command={self.command}",
                f"numprocs={self.per_group}", "process_name=%(program_name)s_%(process_num)02d",
                "autostart=false", "autorestart=true", "startsecs=0", "startretries=3",
                "stopwaitsecs=5", "redirect_stderr=true",
                # pikud's defaults for its logs: 1 MiB, 5 backups
                "stdout_logfile_maxbytes=1MB", "stdout_logfile_backups=5", "",
            ]
        self.conf.write_text("\n".join(lines))

    def start_daemon(self) -> None:
        self._popen([str(BIN / "supervisord"), "-c", str(self.conf)], self.env())

        def ready() -> bool:
            self.check_alive()
            try:
                return bool(self.rpc().supervisor.getState()["statecode"] == 1)
            except Exception:
                return False
        wait_for(ready, STARTUP_DEADLINE, "supervisord to listen", 0.05)

    def start_all(self) -> None:
        """supervisor.startAllProcesses(wait=True): what `supervisorctl start all` sends."""
        results = self.rpc().supervisor.startAllProcesses(True)
        bad = [r for r in results if r["status"] != 80]         # Faults.SUCCESS
        if bad:
            raise RuntimeError(f"supervisord could not start: {bad[:3]}")

    def all_running(self) -> bool:
        infos = self.rpc().supervisor.getAllProcessInfo()
        return sum(i["statename"] == "RUNNING" for i in infos) == self.total

    def cli_argv(self, group: str) -> tuple[list[str], dict[str, str]]:
        return [str(BIN / "supervisorctl"), "-c", str(self.conf), "status", f"{group}:*"], self.env()

    def verify_after_kills(self, kills: int) -> str:
        infos = self.rpc().supervisor.getAllProcessInfo()
        running = sum(i["statename"] == "RUNNING" for i in infos)
        if running != self.total:
            raise RuntimeError(f"supervisord: after {kills} kills: {running}/{self.total} RUNNING")
        return f"{running}/{self.total} RUNNING"


# --- the measurements ---------------------------------------------------------

def measure_start(daemon: Daemon, results: dict[str, float]) -> None:
    finder = AppFinder(daemon.pid)
    error: list[BaseException] = []

    def request() -> None:
        try:
            daemon.start_all()
        except BaseException as exc:            # reported by the main thread
            error.append(exc)

    t0 = time.perf_counter()
    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 120
    while len(finder.scan()) < daemon.total:
        if error:
            raise error[0]
        daemon.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"{daemon.label}: {len(finder.apps)}/{daemon.total} spawned "
                               "after 120s")
        time.sleep(0.005)
    results["spawned"] = time.perf_counter() - t0
    thread.join(120)
    if thread.is_alive():
        raise TimeoutError(f"{daemon.label}: the start request did not return within 120s")
    if error:
        raise error[0]
    wait_for(daemon.all_running, 60, f"{daemon.label}: all RUNNING", 0.01)
    results["running"] = time.perf_counter() - t0


def measure_idle(daemon: Daemon, secs: float, results: dict[str, float]) -> None:
    before = usage(daemon.pid)
    time.sleep(secs)
    after = usage(daemon.pid)
    daemon.check_alive()
    results["idle_cpu_ms"] = (after.ticks - before.ticks) * 1000 / CLK_TCK
    results["idle_run_ms"] = (after.run_ns - before.run_ns) / 1e6
    results["idle_wakeups"] = after.switches - before.switches
    results["threads"] = after.threads


def measure_cli(daemon: Daemon, runs: int, results: dict[str, float]) -> None:
    argv, env = daemon.cli_argv(daemon.names[0])
    times = []
    for i in range(runs + 1):
        t0 = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
        took = time.perf_counter() - t0
        if done.returncode != 0 or done.stdout.count("RUNNING") != daemon.per_group:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n"
                               f"{done.stdout}{done.stderr}")
        if i:                                   # the first run warms the page cache
            times.append(took)
    results["cli_ms"] = statistics.median(times) * 1000


def measure_respawn(daemon: Daemon, kills: int, results: dict[str, float]) -> None:
    finder = AppFinder(daemon.pid)
    slots = list(finder.scan().items())
    if len(slots) != daemon.total:
        raise RuntimeError(f"{daemon.label}: {len(slots)}/{daemon.total} apps found before kills")
    latencies = []
    for kid, app in slots[:kills]:
        before = set(finder.scan())
        if not alive(app):
            raise RuntimeError(f"{daemon.label}: app process {app} is gone before its kill")
        t0 = time.perf_counter()
        os.kill(app, signal.SIGKILL)
        deadline = t0 + 30
        while True:
            if finder.scan().keys() - before:
                break
            if time.perf_counter() > deadline:
                daemon.check_alive()
                raise TimeoutError(f"{daemon.label}: no new app process 30s after kill -9 {app}")
            time.sleep(0.0002)
        latencies.append(time.perf_counter() - t0)
        time.sleep(0.02)                        # let the daemon finish its bookkeeping
    time.sleep(0.5)
    results["respawn_median_ms"] = statistics.median(latencies) * 1000
    results["respawn_p99_ms"] = percentile(latencies, 99) * 1000
    results["respawn_max_ms"] = max(latencies) * 1000
    results["after_kills"] = daemon.verify_after_kills(kills)  # type: ignore[assignment]


# --- sessions ---------------------------------------------------------------

@dataclass
class Config:
    label: str
    make: Callable[[Path, int, int, Sizes], Daemon]
    results: dict[str, Any] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)


def reap_zombies() -> None:
    """Reap orphans re-parented to us (we are a subreaper) once they were killed."""
    while True:
        try:
            if os.waitpid(-1, os.WNOHANG)[0] == 0:
                return
        except ChildProcessError:
            return


def run_session(config: Config, root: Path, groups: int, per_group: int, sizes: Sizes,
                body: Callable[[Daemon], None], graceful: bool = True) -> float:
    """Set up, start the daemon, run ``body``; then stop the daemon (SIGTERM when
    ``graceful``, else SIGKILL and its children killed here) and check nothing is left.
    Returns the seconds the graceful stop took."""
    root.mkdir(parents=True)
    daemon = config.make(root, groups, per_group, sizes)
    took = math.nan
    try:
        daemon.setup()
        daemon.start_daemon()
        body(daemon)
    finally:
        try:
            if graceful:
                took = daemon.stop_daemon()
            else:
                daemon.kill_daemon()
        finally:
            left = tagged_processes(str(root))
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            if left:
                wait_for(lambda: not tagged_processes(str(root)), 10, "killed processes to go")
            reap_zombies()
            if left and graceful:
                config.leftovers.append(f"{root.name}: {len(left)} processes left, killed "
                                        f"({sorted(left)[:5]}...)")
    return took


def run_config(config: Config, sizes: Sizes) -> list[str]:
    """Both phases of one configuration; returns what failed (a failed phase leaves n/a)."""
    base = Path(tempfile.mkdtemp(prefix="bs-", dir="/tmp"))
    failed = []
    try:
        for phase in (start_phase, steady_phase):
            try:
                phase(config, sizes, base)
            except Exception as exc:
                failed.append(f"{config.label}: {phase.__name__}: {type(exc).__name__}: {exc}")
                progress(f"FAILED {failed[-1]}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return failed


def start_phase(config: Config, sizes: Sizes, base: Path) -> None:
    r = config.results
    runs: list[dict[str, float]] = []
    for rep in range(1, sizes.start_reps + 1):
        last = rep == sizes.start_reps
        progress(f"{config.label}: start {sizes.start_total} processes "
                 f"(run {rep}/{sizes.start_reps})")

        def start(daemon: Daemon) -> None:
            runs.append({})
            measure_start(daemon, runs[-1])
            if last:
                runs[-1]["rss_start_mib"] = rss_bytes(daemon.pid) / 2**20
            progress(f"{config.label}: spawned {runs[-1]['spawned']:.2f}s, RUNNING "
                     f"{runs[-1]['running']:.2f}s; stopping")
        # run_session returns only once ``start`` has run: this session's entry is the last.
        runs[-1]["stop"] = run_session(config, base / f"start{rep}", sizes.start_groups,
                                       sizes.start_per_group, sizes, start)
        progress(f"{config.label}: stop took {runs[-1]['stop']:.2f}s")
    for key in ("spawned", "running", "stop"):
        r[key] = statistics.median(run[key] for run in runs)
        r[key + "_all"] = [run[key] for run in runs]
    r["rss_start_mib"] = runs[-1]["rss_start_mib"]


def steady_phase(config: Config, sizes: Sizes, base: Path) -> None:
    r = config.results
    progress(f"{config.label}: {sizes.steady_groups} apps x {sizes.steady_per_group}")

    def steady(daemon: Daemon) -> None:
        time.sleep(0.5)
        r["rss_empty_mib"] = rss_bytes(daemon.pid) / 2**20
        t0 = time.perf_counter()
        daemon.start_all()
        wait_for(daemon.all_running, 60, f"{daemon.label}: all RUNNING")
        if len(AppFinder(daemon.pid).scan()) != daemon.total:
            raise RuntimeError(f"{daemon.label}: not every app process is there")
        progress(f"{config.label}: {daemon.total} running after "
                 f"{time.perf_counter() - t0:.2f}s; settling 2s")
        time.sleep(2)
        r["rss_mib"] = rss_bytes(daemon.pid) / 2**20
        progress(f"{config.label}: RSS {r['rss_mib']:.1f} MiB; idle {sizes.idle_secs:g}s")
        measure_idle(daemon, sizes.idle_secs, r)
        progress(f"{config.label}: idle cpu {r['idle_cpu_ms']:g} ms, "
                 f"wakeups {r['idle_wakeups']}; CLI x{sizes.cli_runs}")
        measure_cli(daemon, sizes.cli_runs, r)
        progress(f"{config.label}: CLI {r['cli_ms']:.0f} ms; {sizes.kills} kills")
        measure_respawn(daemon, sizes.kills, r)
        progress(f"{config.label}: respawn median {r['respawn_median_ms']:.2f} ms, "
                 f"p99 {r['respawn_p99_ms']:.2f} ms ({r['after_kills']})")
    # The graceful stop was measured (and checked) above; this daemon is killed, and
    # its processes with it, to keep the run short.
    run_session(config, base / "steady", sizes.steady_groups, sizes.steady_per_group,
                sizes, steady, graceful=False)


# --- report -----------------------------------------------------------------

def rows(sizes: Sizes) -> list[tuple[str, str, str]]:
    """(label, result key, format)"""
    n, s = sizes.start_total, sizes.steady_total
    idle = f"{sizes.idle_secs:g} s"
    reps = f", median of {sizes.start_reps}" if sizes.start_reps > 1 else ""
    return [
        (f"start {n} procs: all spawned, /proc{reps} (s)", "spawned", ".2f"),
        (f"start {n} procs: all RUNNING, API{reps} (s)", "running", ".2f"),
        (f"respawn after kill -9: median of {sizes.kills} (ms)", "respawn_median_ms", ".2f"),
        (f"respawn after kill -9: p99 of {sizes.kills} (ms)", "respawn_p99_ms", ".2f"),
        (f"supervisor RSS, {sizes.steady_groups} apps x {sizes.steady_per_group} (MiB)",
         "rss_mib", ".1f"),
        ("supervisor RSS, no process yet (MiB)", "rss_empty_mib", ".1f"),
        (f"supervisor RSS, {sizes.start_groups} apps x {sizes.start_per_group} (MiB)",
         "rss_start_mib", ".1f"),
        (f"idle CPU, {idle}, {s} procs: utime+stime (ms)", "idle_cpu_ms", ".0f"),
        (f"idle CPU, {idle}: schedstat run time (ms)", "idle_run_ms", ".1f"),
        (f"idle wakeups, {idle} (context switches)", "idle_wakeups", "d"),
        (f"CLI status of 1 app, median of {sizes.cli_runs} (ms)", "cli_ms", ".0f"),
        (f"stop {n} procs: SIGTERM to daemon exit, median of 3 (s)", "stop", ".2f"),
    ]


def config_tables(configs: list[Config], sizes: Sizes) -> tuple[str, str]:
    body = [[label, *(fmt(c.results.get(key), spec) for c in configs)]
            for label, key, spec in rows(sizes)]
    return tables(["", *(c.label for c in configs)], body)


def machine() -> str:
    cpu = cpu_model()
    return (f"machine: {os.cpu_count()} CPUs (nproc {len(os.sched_getaffinity(0))}), {cpu}, "
            f"Linux {platform.release()}, /bin/sh -> {os.path.realpath('/bin/sh')}\n"
            f"python:  {platform.python_implementation()} {platform.python_version()} "
            f"({sys.executable})\n"
            f"versions: pikud {pikud.__version__}, supervisor {metadata.version('supervisor')}, "
            f"uvloop {metadata.version('uvloop')}, aiohttp {metadata.version('aiohttp')}\n"
            f"pikud from {pikud_source(pikud.__file__)}")


def notes(sizes: Sizes, pikud_cmd: str, sup_cmd: str) -> str:
    reps = (f"the median of {sizes.start_reps} runs, each with a fresh daemon; "
            if sizes.start_reps > 1 else "")
    return f"""\
How each row was measured (one daemon at a time; a fresh daemon and temp dir per session):
- start: {reps}pikud gets {sizes.start_groups} apps (Procfile `worker: {pikud_cmd}`, SCALING worker: \
{sizes.start_per_group}, ENV PIKU_START_SECS=0) deployed by {sizes.start_groups} concurrent \
POST /apps/NAME/deploy; supervisord gets {sizes.start_groups} programs (command={sup_cmd}, \
numprocs={sizes.start_per_group}, startsecs=0, autostart=false) started by one \
supervisor.startAllProcesses(wait=True) (= `supervisorctl start all`). "all spawned": from the \
request until /proc shows {sizes.start_total} `sleep` processes under the daemon (polled every \
5 ms, no API call meanwhile); "all RUNNING": until the request(s) returned and the API \
(GET /apps, getAllProcessInfo) reports all RUNNING.
- respawn: {sizes.steady_groups} apps x {sizes.steady_per_group}, kill -9 of the `sleep` \
process of {sizes.kills} different slots, one at a time; latency from the kill until /proc shows \
a new `sleep` under a new child of the daemon (polled every 0.2 ms); p99 is nearest-rank.
- RSS: VmRSS of the daemon process 2 s after {sizes.steady_total} processes are RUNNING; \
"no process yet": 0.5 s after the daemon answered, before the start request of that session; \
{sizes.start_groups} x {sizes.start_per_group}: right after the last start run.
- idle: deltas over {sizes.idle_secs:g} s untouched, {sizes.steady_total} processes: utime+stime \
of /proc/PID/stat (10 ms ticks), run time from /proc/PID/task/*/schedstat, wakeups = \
voluntary+nonvoluntary context switches summed over the daemon's threads.
- CLI: wall time of `piku ps APP` / `supervisorctl -c CONF status APP:*` (both console scripts of \
bench/.venv), median of {sizes.cli_runs} after one warm-up.
- stop: each start run's daemon, from SIGTERM until it exited having stopped \
{sizes.start_total} processes, its exit seen on a pidfd (supervisord: SIGTERM to each child; \
pikud: SIGTERM to each slot's program, then to what it left); the median of the runs."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes for a smoke run (50 processes, 20 kills, 5 s idle)")
    parser.add_argument("--only", action="append",
                        choices=("nginx", "uvloop-nginx", "router", "asyncio-router",
                                 "supervisord"),
                        help="run only these configurations (repeatable)")
    parser.add_argument("--pikud-command", default="sleep 3600",
                        help="the Procfile command of pikud's apps (default: sleep 3600; "
                             "pikud runs it under /bin/sh -c)")
    parser.add_argument("--supervisord-command", default="sleep 3600",
                        help="supervisord's command= (default: sleep 3600, exec'd directly)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    pcmd, scmd = args.pikud_command, args.supervisord_command
    configs = [
        Config("pikud (nginx)",
               lambda root, g, n, s: Pikud(root, g, n, s, "auto", pcmd, "nginx")),
        Config("pikud (nginx, --loop uvloop)",
               lambda root, g, n, s: Pikud(root, g, n, s, "uvloop", pcmd, "nginx")),
        Config("pikud (router)",
               lambda root, g, n, s: Pikud(root, g, n, s, "auto", pcmd, "builtin")),
        Config("pikud (router, --loop asyncio)",
               lambda root, g, n, s: Pikud(root, g, n, s, "asyncio", pcmd, "builtin")),
        Config("supervisord", lambda root, g, n, s: Supervisord(root, g, n, s, scmd)),
    ]
    keys = {"nginx": 0, "uvloop-nginx": 1, "router": 2, "asyncio-router": 3, "supervisord": 4}
    if args.only:
        configs = [configs[keys[k]] for k in dict.fromkeys(args.only)]

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, terminate)

    # Orphans of a killed daemon come to us, so that we reap them once killed.
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    started = time.perf_counter()
    load_before = load_average()
    failed = []
    for config in configs:
        failed += run_config(config, sizes)

    print_report(machine(), args.quick, started, load_before,
                 config_tables(configs, sizes), notes(sizes, pcmd, scmd))
    threads = ", ".join(f"{c.label} {c.results.get('threads', '?')}" for c in configs)
    print(f"- daemon threads while idle: {threads}")
    for c in configs:
        if "spawned_all" in c.results:
            print(f"- start runs, {c.label}: spawned "
                  + ", ".join(f"{x:.2f}" for x in c.results["spawned_all"]) + " s; RUNNING "
                  + ", ".join(f"{x:.2f}" for x in c.results["running_all"]) + " s; stop "
                  + ", ".join(f"{x:.2f}" for x in c.results["stop_all"]) + " s")
    for c in configs:
        if "after_kills" in c.results:
            print(f"- after the kills, {c.label}: {c.results['after_kills']}; "
                  f"max respawn {c.results['respawn_max_ms']:.2f} ms")
    leftovers = [f"{c.label}: {item}" for c in configs for item in c.leftovers]
    print("- processes left behind: " + ("; ".join(leftovers) if leftovers else "none"))
    for item in failed:
        print(f"FAILED {item}")
    return 1 if failed or leftovers else 0


if __name__ == "__main__":
    raise SystemExit(main())
