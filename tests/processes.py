"""Processes seen through /proc, and stopping a whole session (stdlib only).

The tests (conftest's alive(), the nginx fixture) and the benchmarks
(bench/wsgi.py, in a venv without pytest) use the same few helpers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any

REAP_DEADLINE = 10.0


def proc_stat(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def in_session(sid: int) -> list[int]:
    """Live processes of the session ``sid`` (zombies aside)."""
    return [p for p in all_pids()
            if (fields := proc_stat(p)) and int(fields[3]) == sid and fields[0] != "Z"]


def stop_session(proc: subprocess.Popen[Any], sig: int, timeout: float,
                 linger: float = 5.0) -> list[int]:
    """Signal a process started with ``start_new_session=True``, wait up to
    ``timeout`` for it, then up to ``linger`` for the rest of its session, and
    SIGKILL what is left; always reaps ``proc``. Returns the pids that had to be
    killed."""
    if proc.poll() is None:
        proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    deadline = time.monotonic() + linger
    while in_session(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = in_session(proc.pid)
    for pid in killed:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()
    proc.wait(REAP_DEADLINE)
    return killed


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"
