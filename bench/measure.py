"""What the benchmarks share: reading /proc, percentiles, tables, where pikud came from."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def read_text(path: str | Path) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


@dataclass(frozen=True)
class Usage:
    ticks: int          # utime + stime of the process (clock ticks)
    child_ticks: int    # cutime + cstime: the children it reaped
    run_ns: int         # schedstat run time over every thread
    switches: int       # voluntary + nonvoluntary context switches over every thread
    threads: int
    rss_kib: int

    def minus(self, other: Usage) -> dict[str, float]:
        return {
            "cpu_ms": (self.ticks - other.ticks) * 1000 / CLK_TCK,
            "child_cpu_ms": (self.child_ticks - other.child_ticks) * 1000 / CLK_TCK,
            "run_ms": (self.run_ns - other.run_ns) / 1e6,
            "switches": self.switches - other.switches,
        }


def usage(pid: int) -> Usage:
    stat = read_text(f"/proc/{pid}/stat")
    if stat is None:
        raise ProcessLookupError(pid)
    fields = stat.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])           # utime, stime (fields 14, 15)
    child_ticks = int(fields[13]) + int(fields[14])     # cutime, cstime (fields 16, 17)
    run_ns = switches = threads = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        sched = read_text(f"/proc/{pid}/task/{tid}/schedstat")
        if sched:
            run_ns += int(sched.split()[0])
        for line in (read_text(f"/proc/{pid}/task/{tid}/status") or "").splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                switches += int(line.split()[1])
        threads += 1
    rss = next((int(line.split()[1]) for line in
                (read_text(f"/proc/{pid}/status") or "").splitlines()
                if line.startswith("VmRSS:")), 0)
    return Usage(ticks, child_ticks, run_ns, switches, threads, rss)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def tables(head: Sequence[str], body: Sequence[Sequence[str]]) -> tuple[str, str]:
    """The same table as aligned plain text and as markdown (numbers right-aligned)."""
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                         for i, cell in enumerate(row)).rstrip()
    plain = "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])
    md = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    return plain, "\n".join(md)


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in
                 (read_text("/proc/cpuinfo") or "").splitlines()
                 if line.startswith("model name")), platform.machine())


def pikud_source(package_file: str) -> str:
    """Where pikud was imported from, and its git commit when that is a work tree."""
    where = Path(package_file).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(where), "log", "-1", "--format=%h %cs"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "--", "pikud"],
                               capture_output=True, text=True, timeout=10)
    except OSError:
        return str(where)
    if rev.returncode != 0:
        return str(where)
    return f"{where} at {rev.stdout.strip()}" + (" + uncommitted changes" if dirty.stdout else "")


def wait_answering(client: Any, check_alive: Any, label: str, timeout: float) -> None:
    """Wait until a freshly started pikud answers ``GET /status`` (its process checked alive)."""
    from tests.waiting import wait_for

    def ready() -> bool:
        check_alive()
        try:
            client.request("GET", "/status")
            return True
        except Exception:
            return False
    wait_for(ready, timeout, f"{label} to listen", 0.05)


def load_average() -> str:
    return " ".join((read_text("/proc/loadavg") or "?").split()[:3])


def print_report(machine: str, quick: bool, started: float, load_before: str,
                 tables_text: tuple[str, str], notes: str) -> None:
    """What every benchmark prints: the machine, the run, both tables, how rows were measured."""
    plain, md = tables_text
    print(machine)
    print(f"sizes: {'quick' if quick else 'full'}; run took "
          f"{time.perf_counter() - started:.0f} s; load average before "
          f"{load_before}, after {load_average()}\n")
    print(plain)
    print()
    print(md)
    print()
    print(notes)
