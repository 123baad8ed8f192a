#!/usr/bin/env python3
"""Cron firing accuracy and idle cost: pikud's scheduler against Debian's cron, in one run.

Run by ``bench/run cron`` (``--quick`` for a smoke run). Each configuration
runs alone (never both at once), with the same jobs: APPS apps x KINDS kinds,
every one ``* * * * *`` running ``date +%s%N >> DATA/APP/fired``.

- pikud: its own daemon in a temp PIKU_ROOT (PIKU_PROXY=builtin, HTTP on
  127.0.0.1:0), apps/NAME with a Procfile of ``cron1`` .. ``cronN``, deployed
  by concurrent ``POST /apps/NAME/deploy``; the command appends to
  ``$DATA_ROOT/fired``.
- Debian cron: ``/usr/sbin/cron -f`` started by the benchmark, the same
  entries in /etc/cron.d/pikud-bench (user root), removed afterwards.

Lateness is what the job itself saw: the ``date`` of each run minus the
minute it was due. The daemon's own cost is read from /proc: utime+stime,
schedstat run time and context switches over its threads, over the idle
stretch between two firings and over the whole measured stretch.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

try:
    import pikud
    from pikud.control.client import Client
except ImportError as exc:  # pragma: no cover - a usage error
    sys.exit(f"cron.py: {exc}; run it with bench/run cron (it makes bench/.venv)")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.waiting import wait_for  # noqa: E402  (the tests' deadline helper)
from bench.measure import (cpu_model, fmt, percentile, pikud_source,  # noqa: E402
                           load_average, print_report, progress, read_text, tables, usage,
                           wait_answering)

CRON = Path("/usr/sbin/cron")
CRON_FILE = Path("/etc/cron.d/pikud-bench")     # cron.d names: letters, digits, _ and - only
STARTUP_DEADLINE = 30.0
LEAD = 8.0              # at least this long between "ready" and the first measured minute
BEFORE = 5.0            # the whole-run snapshot starts this long before the first minute
SETTLE = 10.0           # after the last minute: every run is over by then
IDLE_FROM = 10.0        # the idle stretch starts this long after a minute


@dataclass(frozen=True)
class Sizes:
    apps: int
    kinds: int
    minutes: int        # minute boundaries measured
    idle_secs: float    # the idle stretch: IDLE_FROM .. IDLE_FROM + idle_secs after the first

    @property
    def jobs(self) -> int:
        return self.apps * self.kinds


FULL = Sizes(100, 10, 2, 40.0)
QUICK = Sizes(10, 10, 1, 15.0)


# --- /proc ------------------------------------------------------------------

def processes_mentioning(text: str) -> list[int]:
    """Live processes whose command line or environment contains ``text``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{name}/{part}").read_bytes()
            except OSError:
                continue
            if text.encode() in data:
                stat = read_text(f"/proc/{name}/stat") or ""
                if stat and stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X"):
                    found.append(int(name))
                break
    return found


# --- the schedulers -----------------------------------------------------------

@dataclass
class Result:
    label: str
    lateness_ms: list[float] = field(default_factory=list)   # every run seen, all minutes
    per_minute: list[int] = field(default_factory=list)      # runs seen for each minute
    header_ms: list[float] = field(default_factory=list)     # pikud: the run header's time
    idle: dict[str, float] = field(default_factory=dict)
    whole: dict[str, float] = field(default_factory=dict)
    whole_secs: float = 0.0
    rss_kib: int = 0
    threads: int = 0
    notes: list[str] = field(default_factory=list)
    error: str | None = None


class Scheduler:
    label = "?"

    def __init__(self, base: Path, sizes: Sizes) -> None:
        self.base = base
        self.sizes = sizes
        self.names = [f"app{n:03d}" for n in range(sizes.apps)]
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = base / "daemon.log"

    def fired_file(self, app: str) -> Path:
        raise NotImplementedError

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = (read_text(self.log) or "")[-2000:]
            raise RuntimeError(f"{self.label} exited with {self.proc.returncode}:\n{tail}")

    def start(self) -> None:
        raise NotImplementedError

    def after(self, result: Result, minutes: list[float]) -> None:
        """Extra checks once the measurement is over (the daemon still runs)."""

    def stop(self) -> None:
        """SIGTERM, wait; SIGKILL if it does not go within 60 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            progress(f"{self.label} ignored SIGTERM for 60 s; SIGKILL")
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        pass


class Pikud(Scheduler):
    def __init__(self, base: Path, sizes: Sizes, loop: str | None) -> None:
        super().__init__(base, sizes)
        self.root = base / "piku"
        self.loop = loop
        self.label = "pikud" + (f" (--loop {loop})" if loop else "")
        self.client = Client(self.root / "pikud.sock", timeout=300)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PIKU")}
        env.update(PIKU_ROOT=str(self.root), PIKU_PROXY="builtin",
                   PIKU_HTTP_ADDRESS="127.0.0.1:0")
        return env

    def fired_file(self, app: str) -> Path:
        return self.root / "data" / app / "fired"

    def start(self) -> None:
        procfile = "".join(f"cron{k}: * * * * * date +%s%N >> \"$DATA_ROOT/fired\"\n"
                           for k in range(1, self.sizes.kinds + 1))
        for name in self.names:
            app = self.root / "apps" / name
            app.mkdir(parents=True)
            (app / "Procfile").write_text(procfile)
        argv = [sys.executable, "-m", "pikud", "serve"]
        if self.loop:
            argv += ["--loop", self.loop]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, env=self.env(), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_answering(self.client, self.check_alive, self.label, STARTUP_DEADLINE)
        started = time.monotonic()

        def deploy(name: str) -> None:
            Client(self.root / "pikud.sock", timeout=300).request("POST", f"/apps/{name}/deploy")
        with concurrent.futures.ThreadPoolExecutor(min(len(self.names), 50)) as pool:
            for result in [pool.submit(deploy, n) for n in self.names]:
                result.result()
        jobs = sum(len(self.client.request("GET", f"/apps/{n}/cron")["jobs"])
                   for n in self.names)
        if jobs != self.sizes.jobs:
            raise RuntimeError(f"pikud lists {jobs} cron jobs, expected {self.sizes.jobs}")
        progress(f"{self.label}: {len(self.names)} apps deployed, {jobs} jobs listed "
                 f"in {time.monotonic() - started:.1f} s")

    def after(self, result: Result, minutes: list[float]) -> None:
        """The run headers' own timestamps (when the scheduler started each run), and
        every job's last status from the API."""
        first, end = minutes[0], minutes[-1] + 60
        for name in self.names:
            for log in sorted((self.root / "logs" / name).glob("cron*.log")):
                for line in (read_text(log) or "").splitlines():
                    stamp, _, text = line.partition(" ")
                    if not text.startswith("----- run started at"):
                        continue
                    t = datetime.fromisoformat(stamp).timestamp()
                    if first <= t < end:
                        result.header_ms.append((t - due_minute(t, minutes)) * 1000)
        statuses: dict[str, int] = {}
        for name in self.names:
            for job in self.client.request("GET", f"/apps/{name}/cron")["jobs"]:
                status = (job.get("last_run") or {}).get("status", "never ran")
                statuses[status] = statuses.get(status, 0) + 1
        result.notes.append("last_run status of every job (GET /apps/APP/cron): "
                            + ", ".join(f"{n} x {s!r}" for s, n in sorted(statuses.items())))
        warnings = [line for line in (read_text(self.log) or "").splitlines()
                    if " WARNING " in line or " ERROR " in line or "Traceback" in line]
        if warnings:
            result.notes.append(f"daemon log: {len(warnings)} warning/error lines, first: "
                                f"{warnings[0][:200]}")


class DebianCron(Scheduler):
    label = "Debian cron"

    def __init__(self, base: Path, sizes: Sizes) -> None:
        super().__init__(base, sizes)
        self.data = base / "data"
        self.wrote_file = False

    def fired_file(self, app: str) -> Path:
        return self.data / app / "fired"

    @staticmethod
    def unavailable() -> str | None:
        if not CRON.exists():
            return f"{CRON} is not installed (bench/run cron installs it as root on Debian)"
        if os.geteuid() != 0:
            return "Debian cron runs /etc/cron.d files only as root; not root"
        if CRON_FILE.exists():
            return f"{CRON_FILE} exists already (another run?); not touching it"
        running = [pid for pid in os.listdir("/proc") if pid.isdigit()
                   and (read_text(f"/proc/{pid}/comm") or "").strip() == "cron"]
        if running:
            return f"a cron daemon is already running (pid {', '.join(running)})"
        return None

    def start(self) -> None:
        lines = ["# pikud benchmark (bench/cron.py); removed when it ends\n"]
        for name in self.names:
            (self.data / name).mkdir(parents=True)
            fired = self.fired_file(name)
            lines += [f"* * * * * root date +\\%s\\%N >> {fired}\n"] * self.sizes.kinds
        tmp = CRON_FILE.with_name(".pikud-bench.tmp")       # a dot name: cron ignores it
        tmp.write_text("".join(lines))
        os.chmod(tmp, 0o644)
        self.wrote_file = True
        os.replace(tmp, CRON_FILE)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([str(CRON), "-f"], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd="/")
        time.sleep(1.0)
        self.check_alive()
        progress(f"{self.label}: pid {self.proc.pid}, {self.sizes.jobs} entries in {CRON_FILE}")

    def cleanup(self) -> None:
        if self.wrote_file:
            CRON_FILE.unlink(missing_ok=True)
            CRON_FILE.with_name(".pikud-bench.tmp").unlink(missing_ok=True)


# --- the measurement ------------------------------------------------------------

def sleep_until(wall: float, scheduler: Scheduler) -> None:
    while True:
        left = wall - time.time()
        if left <= 0:
            return
        scheduler.check_alive()
        time.sleep(min(left, 1.0))


def due_minute(t: float, minutes: list[float]) -> float:
    """The measured minute a run at ``t`` belongs to: the latest one not after it."""
    return max((m for m in minutes if m <= t), default=minutes[0])


def measure(scheduler: Scheduler, sizes: Sizes) -> Result:
    result = Result(scheduler.label)
    first = math.floor((time.time() + LEAD + BEFORE) / 60 + 1) * 60
    minutes = [first + 60 * i for i in range(sizes.minutes)]
    idle_from, idle_to = first + IDLE_FROM, first + IDLE_FROM + sizes.idle_secs
    end = max(minutes[-1] + SETTLE, idle_to)
    progress(f"{scheduler.label}: measuring the minutes "
             + ", ".join(time.strftime('%H:%M', time.localtime(m)) for m in minutes)
             + f" (until {time.strftime('%H:%M:%S', time.localtime(end))})")
    sleep_until(first - BEFORE, scheduler)
    u0, t0 = usage(scheduler.pid), time.time()
    sleep_until(idle_from, scheduler)
    i0, it0 = usage(scheduler.pid), time.time()
    sleep_until(idle_to, scheduler)
    i1, it1 = usage(scheduler.pid), time.time()
    sleep_until(end, scheduler)
    expected = sizes.jobs * sizes.minutes

    def seen() -> int:
        return sum(len((read_text(scheduler.fired_file(n)) or "").split())
                   for n in scheduler.names)
    try:    # runs still going (a late scheduler) get 30 s more, but are not counted as idle
        wait_for(lambda: seen() >= expected, 30, "every run", 0.5)
    except AssertionError:
        pass
    u1, t1 = usage(scheduler.pid), time.time()
    result.idle = dict(i1.minus(i0), secs=it1 - it0)
    result.whole = u1.minus(u0)
    result.whole_secs = t1 - t0
    result.rss_kib = u1.rss_kib
    result.threads = len(os.listdir(f"/proc/{scheduler.pid}/task"))
    result.per_minute = [0] * len(minutes)
    outside = 0
    for name in scheduler.names:
        for word in (read_text(scheduler.fired_file(name)) or "").split():
            t = int(word) / 1e9
            if not minutes[0] <= t < minutes[-1] + 60:
                outside += 1
                continue
            due = due_minute(t, minutes)
            result.per_minute[minutes.index(due)] += 1
            result.lateness_ms.append((t - due) * 1000)
    if outside:
        result.notes.append(f"{outside} runs outside the measured minutes (before the first, "
                            "while setting up) were left out")
    scheduler.after(result, minutes)
    return result


def run_config(scheduler: Scheduler, sizes: Sizes) -> Result:
    try:
        scheduler.start()
        return measure(scheduler, sizes)
    except Exception as error:      # report it with the other column's figures
        progress(f"{scheduler.label} failed: {error}")
        return Result(scheduler.label, error=str(error).splitlines()[0][:300])
    finally:
        scheduler.stop()
        scheduler.cleanup()
        left = processes_mentioning(str(scheduler.base))
        if left:
            progress(f"{scheduler.label}: processes left after the stop: {left}; SIGKILL")
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        log = read_text(scheduler.log) or ""
        if log.strip() and scheduler.label == DebianCron.label:
            progress(f"cron's own output: {log.strip()[:500]}")


# --- the report -------------------------------------------------------------------

def rows(results: list[Result], sizes: Sizes) -> list[list[str]]:
    def lat(r: Result, values: list[float], what: str) -> str | None:
        if not values:
            return None
        return {"median": statistics.median, "p99": lambda v: percentile(v, 99),
                "max": max, "min": min}[what](values)

    out: list[list[str]] = []

    def add(name: str, spec: str, get: Any) -> None:
        out.append([name] + [r.error and "failed" or fmt(get(r), spec) for r in results])

    n = sizes.jobs * sizes.minutes
    add(f"runs seen, of {n} ({sizes.jobs} jobs x {sizes.minutes} minutes)", "d",
        lambda r: len(r.lateness_ms))
    for what in ("median", "p99", "max"):
        add(f"lateness, job's own clock: {what} (ms)", ".0f",
            lambda r, w=what: lat(r, r.lateness_ms, w))
    add("lateness, job's own clock: first run (ms)", ".0f",
        lambda r: lat(r, r.lateness_ms, "min"))
    for what in ("median", "p99", "max"):
        add(f"lateness, run header in the log: {what} (ms)", ".0f",
            lambda r, w=what: lat(r, r.header_ms, w))
    add("lateness, run header in the log: first run (ms)", ".0f",
        lambda r: lat(r, r.header_ms, "min"))
    idle = f"idle {sizes.idle_secs:g} s between minutes"
    add(f"{idle}: CPU utime+stime (ms)", ".0f", lambda r: r.idle.get("cpu_ms"))
    add(f"{idle}: schedstat run time (ms)", ".1f", lambda r: r.idle.get("run_ms"))
    add(f"{idle}: context switches", ".0f", lambda r: r.idle.get("switches"))
    whole = f"whole run ({sizes.minutes} firings)"
    add(f"{whole}: CPU utime+stime (ms)", ".0f", lambda r: r.whole.get("cpu_ms"))
    add(f"{whole}: schedstat run time (ms)", ".1f", lambda r: r.whole.get("run_ms"))
    add(f"{whole}: context switches", ".0f", lambda r: r.whole.get("switches"))
    add(f"{whole}: CPU of reaped children (ms)", ".0f", lambda r: r.whole.get("child_cpu_ms"))
    add("daemon RSS at the end (MiB)", ".1f", lambda r: r.rss_kib / 1024 if r.rss_kib else None)
    return out


def results_tables(results: list[Result], sizes: Sizes) -> tuple[str, str]:
    return tables(["", *(r.label for r in results)], rows(results, sizes))


def version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> str:
    cpu = cpu_model()
    cron = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "cron"],
                          capture_output=True, text=True).stdout.strip() or "not installed"
    return (f"machine: {os.cpu_count()} CPUs, {cpu}, Linux {platform.release()}, "
            f"/bin/sh -> {os.path.realpath('/bin/sh')}, zone {time.strftime('%Z')}\n"
            f"python:  {platform.python_implementation()} {platform.python_version()}; "
            f"pikud {pikud.__version__}, uvloop {version('uvloop')}, "
            f"aiohttp {version('aiohttp')}; Debian cron {cron}\n"
            f"pikud from {pikud_source(pikud.__file__)}")


def notes(sizes: Sizes) -> str:
    return f"""\
How it was measured (one scheduler at a time, each with the same {sizes.jobs} jobs: \
{sizes.apps} apps x {sizes.kinds} entries `* * * * *`):
- pikud: `python -m pikud serve` in a temp PIKU_ROOT (PIKU_PROXY=builtin), {sizes.apps} apps \
with Procfile lines `cronN: * * * * * date +%s%N >> "$DATA_ROOT/fired"`, deployed by concurrent \
POST /apps/NAME/deploy. Debian cron: `/usr/sbin/cron -f` started by the benchmark, \
/etc/cron.d/pikud-bench with `* * * * * root date +\\%s\\%N >> DIR/APP/fired` x {sizes.jobs} \
(removed at the end).
- lateness, job's own clock: each run's `date +%s%N` minus the minute it was due, over \
{sizes.minutes} minute(s) measured after everything was set up; p99 is nearest-rank. This is \
when the job's process actually ran (scheduler wake-up + fork/exec + /bin/sh + date).
- lateness, run header: pikud's `----- run started at ...` line in logs/APP/cronN.log, by \
the log's own millisecond timestamp (written just before the spawn): the scheduler's part.
- idle: deltas from {IDLE_FROM:g} s to {IDLE_FROM + sizes.idle_secs:g} s after the first \
measured minute (every run of that minute is over): utime+stime of /proc/PID/stat (10 ms ticks), \
run time from /proc/PID/task/*/schedstat, context switches = voluntary+nonvoluntary summed over \
/proc/PID/task/*/status (wake-ups of the daemon).
- whole run: the same deltas from {BEFORE:g} s before the first measured minute to \
{SETTLE:g} s after the last one (or later, until every run was seen); "CPU of reaped children" \
is cutime+cstime: the jobs themselves (/bin/sh + date) and, for cron, its per-job fork that \
waits for the job."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 100 jobs (10 apps x 10), 1 minute, 15 s idle")
    parser.add_argument("--only", action="append", choices=("pikud", "cron"),
                        help="run only these configurations (repeatable)")
    parser.add_argument("--loop", choices=("uvloop", "asyncio"),
                        help="pikud's event loop (default: pikud's own default)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    only = set(args.only or ("pikud", "cron"))

    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, terminate)

    started = time.perf_counter()
    load_before = load_average()
    results: list[Result] = []
    base = Path(tempfile.mkdtemp(prefix="pkcron-", dir="/tmp"))
    try:
        if "pikud" in only:
            results.append(run_config(Pikud(base / "pikud", sizes, args.loop), sizes))
        if "cron" in only:
            why = DebianCron.unavailable()
            if why:
                progress(f"Debian cron left out: {why}")
                results.append(Result(DebianCron.label, error=why))
            else:
                results.append(run_config(DebianCron(base / "cron", sizes), sizes))
    finally:
        shutil.rmtree(base, ignore_errors=True)

    print_report(machine(), args.quick, started, load_before,
                 results_tables(results, sizes), notes(sizes))
    for r in results:
        if r.error:
            print(f"- {r.label}: FAILED: {r.error}")
            continue
        print(f"- {r.label}: runs per minute {r.per_minute}; {r.threads} threads; "
              f"idle stretch {r.idle.get('secs', 0):.1f} s, whole run {r.whole_secs:.1f} s")
        for note in r.notes:
            print(f"- {r.label}: {note}")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
