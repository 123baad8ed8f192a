"""One cron kind of one app: its settings, and how one run of it is carried out.

A run is ``/bin/sh -c COMMAND`` (Procfile commands are shell commands by
contract) in the app's cwd with its live environment, plus ``PIKU_PROCESS=
app:KIND`` and ``PIKU_CRON_RUN=N``. Those mark the run's processes, so a
timeout or a stop reaches its whole tree, even a daemonized grandchild, and
never another run of the same kind (overlap ``allow``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pikud import identity
from pikud.appspec import Procfile, is_cron
from pikud.convert import seconds
from pikud.cron.schedule import CronEntry, check_fires, parse_cron, zone
from pikud.errors import AppUserError, CronError
from pikud.limits import Limits
from pikud.procman.children import MARKER, Child
from pikud.procman.enforce import Confinement, current
from pikud.procman.logs import LogFile, PipeReader
from pikud.procman.oneshot import OneShotTimeout, finish_once, start_once

OVERLAPS = ("skip", "allow", "queue")
SHELL = "/bin/sh"
RUN_ID = "PIKU_CRON_RUN"


@dataclass(frozen=True)
class JobSpec:
    """Everything needed to run one cron kind of one app."""

    app: str
    kind: str
    entry: CronEntry
    env: tuple[tuple[str, str], ...]
    cwd: Path
    log_path: Path
    tz: str | None = None               # IANA name from the app's TZ; None: the server's zone
    overlap: str = "skip"               # skip | allow | queue
    timeout: float | None = None
    stop_timeout: float = 10.0
    log_max_bytes: int = 1048576
    log_backups: int = 5
    limits: Limits = field(default_factory=Limits)  # PIKU_MEMORY_MAX_CRON1, ... (enforce.py)

    @property
    def name(self) -> str:
        return f"{self.app}:{self.kind}"


def job_settings(env: Mapping[str, str]) -> tuple[str | None, str, float | None]:
    """(TZ, PIKU_CRON_OVERLAP, PIKU_CRON_TIMEOUT) of an app's env, checked; errors name the key."""
    tz = env.get("TZ", "").strip().removeprefix(":") or None
    if tz is not None:
        zone(tz)
    overlap = env.get("PIKU_CRON_OVERLAP", "skip").strip().lower()
    if overlap not in OVERLAPS:
        raise CronError(f"PIKU_CRON_OVERLAP: expected skip, allow or queue, got "
                        f"{env['PIKU_CRON_OVERLAP']!r}", key="PIKU_CRON_OVERLAP")
    timeout = None
    if "PIKU_CRON_TIMEOUT" in env:
        timeout = seconds("PIKU_CRON_TIMEOUT", env["PIKU_CRON_TIMEOUT"]) or None    # 0: none
    return tz, overlap, timeout


Running = tuple[Child, PipeReader | None]     # a run's process and its output


def start_job(spec: JobSpec, run_id: int, output: LogFile,
              ) -> tuple[Running, Confinement | None]:
    """Spawn one run under the kind's limits, as the app's user; OSError when it cannot
    start (AppUserError without that user)."""
    env = dict(spec.env)
    env[MARKER], env[RUN_ID] = spec.name, str(run_id)
    argv = identity.current().as_app(spec.app, [SHELL, "-c", spec.entry.command])
    confinement = None
    if spec.limits:
        argv, confinement = current().confine(spec.name, argv, spec.limits)
    try:
        return start_once(argv, env=env, cwd=spec.cwd, on_line=output.write_line), confinement
    except OSError:
        current().release(confinement)
        raise


async def run_job(spec: JobSpec, run_id: int, output: LogFile,
                  running: Callable[[Running], None], adopted: Running | None = None,
                  elapsed: float = 0.0) -> tuple[str, int]:
    """Run the job once to its end (or its timeout); returns (status, log level).

    ``running`` is told the run's process once it is spawned (or ``adopted``:
    a run the previous image started ``elapsed`` seconds ago). The status is
    ``str(ExitInfo)``, ``timed out (...)`` or ``failed to start: ...``. A
    cancellation stops the run's tree before it goes on.
    """
    confinement = None
    try:
        if adopted is not None:
            started = adopted
        else:
            started, confinement = start_job(spec, run_id, output)
    except (OSError, AppUserError) as error:        # AppUserError: piku-APP removed by hand
        return f"failed to start: {error}", logging.ERROR
    running(started)
    timeout = None if spec.timeout is None else max(spec.timeout - elapsed, 0.0)
    try:
        info = await finish_once(*started, timeout=timeout, stop_timeout=spec.stop_timeout)
        ended = f"{info}{current().note(confinement, info.code)}"   # before the release
    except OneShotTimeout as timed_out:
        return str(timed_out), logging.WARNING
    finally:
        current().release(confinement)
    return ended, logging.INFO if info.code == 0 else logging.WARNING


def cron_entries(procfile: Procfile, file: str = "Procfile", *,
                 tz: str | None = None) -> dict[str, CronEntry]:
    """Every ``cron*`` kind of a Procfile, parsed and checked to run in ``tz`` (the app's
    TZ, None: the server's zone); the first bad one raises CronError."""
    entries = {kind: parse_cron(kind, command, file)
               for kind, command in procfile.entries.items() if is_cron(kind)}
    for entry in entries.values():
        check_fires(entry, zone(tz))
    return entries
