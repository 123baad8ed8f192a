"""The cron scheduler: every app's jobs, each run a one-shot process tree.

One timer serves every job (``timer.DueTimes``: a heap of next times, see its
design notes); this module decides what a due job does and keeps the record
of its runs.

Design notes:
- Catch-up: a job found late by more than ``catchup`` seconds (60; the
  machine slept, the clock jumped forward, pikud was down) runs at most once,
  and only if one of its times falls within the last ``catchup`` seconds;
  otherwise the missed time is reported and it waits for its next time.
  There is never a burst of missed runs.
- A backward clock change (seen against the monotonic clock) is treated as
  Debian cron treats one: up to 3 hours, fixed-time jobs keep their next time
  (a time is not run twice) and wildcard jobs follow the new time; more than
  3 hours is a correction, and every job follows the new time.
- Times are kept as UTC datetimes: two datetimes of one zone compare by wall
  time, ignoring ``fold``, which is wrong in the repeated autumn hour.
- Each run is a task owned by the scheduler; ``remove_app`` and ``close``
  cancel and await them, and a cancelled run stops its whole tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pikud.cron import no_job
from pikud.cron.jobs import JobSpec, Running, job_settings, run_job
from pikud.cron.schedule import next_run, zone
from pikud.cron.state import CronState, parse_time
from pikud.cron.timer import DueTimes
from pikud.errors import BadRequest
from pikud.handover import CronRecord
from pikud.procman.children import Child
from pikud.procman.logs import Follower, LogFile, PipeReader
from pikud.procman.oneshot import OneShotTimeout, finish_once

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

__all__ = ["JobSpec", "Scheduler", "job_settings", "utc_now"]

log = logging.getLogger(__name__)

CATCHUP = 60.0          # seconds a run may start late; later than that, it is missed
JUMP_TOLERANCE = 1.0    # seconds the wall clock may fall behind the monotonic one between wakes
BIG_JUMP = 3 * 3600.0   # Debian cron: a change of more than 3 hours is a correction

EventSink = Callable[[str, str | None, str, str], None]
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def _iso(moment: datetime, tz: ZoneInfo) -> str:
    return moment.astimezone(tz).isoformat(timespec="seconds")


@dataclass(eq=False)
class _Run:
    task: asyncio.Task[None]
    started: datetime
    t0: float                           # loop time at the start, for the duration
    running: Running | None = None      # its process, once spawned


@dataclass(eq=False)
class _Job:
    spec: JobSpec
    zone: ZoneInfo
    output: LogFile
    due: datetime | None = None         # next scheduled time (UTC); None for @reboot
    handled: datetime | None = None     # every scheduled time up to this one is dealt with
    runs: dict[int, _Run] = field(default_factory=dict)
    queued: bool = False
    last: dict[str, Any] | None = None  # {started, status, duration} of the latest run started
    last_id: int = 0
    active: bool = True


class Scheduler:
    """Runs every app's cron jobs on time, from one timer; see the module's design notes."""

    def __init__(self, state_file: Path, on_event: EventSink,
                 followers_for: Callable[[str], set[Follower]], clock: Clock = utc_now,
                 *, catchup: float = CATCHUP) -> None:
        self.catchup = catchup
        self._on_event, self._followers_for, self._clock = on_event, followers_for, clock
        self._state = CronState(state_file)
        self._jobs: dict[str, dict[str, _Job]] = {}
        self._times: DueTimes[_Job] = DueTimes(clock, self.wake)
        self._run_ids = itertools.count(1)
        self._tasks: dict[asyncio.Task[None], str] = {}     # every run -> its app
        self._closed = False
        self._orphans: set[asyncio.Task[None]] = set()     # adopted runs no job names

    # -- the API ---------------------------------------------------------------

    def set_jobs(self, app: str, jobs: list[JobSpec], *, starting: bool) -> None:
        """Make ``jobs`` the app's jobs (deploy, start, config); ``starting`` runs @reboot ones.

        A kind whose schedule and zone did not change keeps its next time; runs
        going on are left to finish. An empty list also forgets the app's history.
        """
        if self._closed:
            return
        zones = {spec.kind: zone(spec.tz) for spec in jobs}     # may raise: nothing changed yet
        now = self._clock()
        old = self._jobs.pop(app, {})
        current: dict[str, _Job] = {}
        for spec in jobs:
            tz, job = zones[spec.kind], old.pop(spec.kind, None)
            schedule, keep = (spec.entry.expression, tz.key), False
            if job is None:
                job = _Job(spec, tz, self._log_file(spec))
                record = self._state.get(app, spec.kind)
                job.last = record.get("last_run")
                if (record.get("schedule"), record.get("tz")) == schedule:
                    job.handled = parse_time(record.get("handled"))
            else:
                keep = (job.spec.entry.expression, job.zone.key) == schedule
                if _log_settings(job.spec) != _log_settings(spec):
                    if not job.runs:
                        job.output.close()
                    job.output = self._log_file(spec)
                job.spec, job.zone = spec, tz
                if not keep:
                    job.handled = now       # a new schedule starts from now
            current[spec.kind] = job
            if keep:
                continue                    # the same schedule: its next time stands
            job.handled = job.handled or now
            self._schedule(job, None if spec.entry.reboot
                           else next_run(spec.entry, job.handled, tz))
        for job in old.values():
            self._retire(job)
        if current:
            self._jobs[app] = current
        self._state.keep_only(app, set(current))
        for job in current.values():
            self._remember(job)
        if starting:
            for job in current.values():
                if job.spec.entry.reboot:
                    self._trigger(job, now)
        self._arm()

    async def remove_app(self, app: str) -> None:
        """The app stopped or is destroyed: drop its timers and stop its running jobs.

        The history stays; when the app starts again, its schedule starts from then.
        """
        for job in self._jobs.pop(app, {}).values():
            self._retire(job)
            job.handled = None
            self._remember(job)
        await self._stop_runs([task for task, owner in self._tasks.items() if owner == app])
        self._arm()

    async def run_now(self, app: str, kind: str) -> dict[str, Any]:
        """Start one run of ``kind`` now (``piku cron:run``), within the overlap policy.

        With a run going: ``allow`` starts another, ``queue`` queues one (at
        most one), ``skip`` refuses. Returns {kind, started (ISO or None), queued}.
        """
        job = self._jobs.get(app, {}).get(kind)
        if job is None:
            raise no_job(app, kind)
        if job.runs and job.spec.overlap != "allow":
            if job.spec.overlap == "queue" and not job.queued:
                self._queue(job, "cron:run")
                return {"kind": kind, "started": None, "queued": True}
            since = _iso(max(run.started for run in job.runs.values()), job.zone)
            extra = " and another run is queued" if job.queued else ""
            raise BadRequest(f"{job.spec.name} is already running (since {since}){extra}; "
                             f"PIKU_CRON_OVERLAP={job.spec.overlap}")
        started = self._start(job, ", run by hand")
        return {"kind": kind, "started": _iso(started, job.zone), "queued": False}

    @property
    def problem(self) -> str | None:
        """Why the history was lost at start (a corrupt cron.json), if it was."""
        return self._state.problem

    def describe(self, app: str) -> list[dict[str, Any]]:
        """Each job of the app: schedule, command, zone, next run, last run, running."""
        loop_time = asyncio.get_running_loop().time()
        described = []
        for kind, job in self._jobs.get(app, {}).items():
            last = dict(job.last) if job.last is not None else None
            if last is not None and job.last_id in job.runs:
                last["duration"] = round(loop_time - job.runs[job.last_id].t0, 3)
            described.append({
                "kind": kind, "schedule": job.spec.entry.expression,
                "command": job.spec.entry.command, "tz": job.zone.key,
                "next_run": _iso(job.due, job.zone) if job.due is not None else None,
                "last_run": last, "running": bool(job.runs), "queued": job.queued,
                "overlap": job.spec.overlap, "timeout": job.spec.timeout,
            })
        return described

    def wake(self) -> None:
        """Re-read the wall clock, start what is due and re-arm the timer.

        The timer calls this; call it too when the wall clock may have changed.
        """
        self._times.cancel()
        if self._closed:
            return
        now = self._clock()
        self._follow_backward_jump(now)
        while (job := self._times.pop_due(now)) is not None:
            try:
                self._fire(job, now)
            except Exception:       # the root of the timer: one job must not stop them all
                log.exception("cron: %s could not be started", job.spec.name)
        self._arm()

    async def close(self) -> None:
        """Daemon shutdown: stop the running jobs (their whole trees), cancel timers, save."""
        self._closed = True
        self._times.cancel()
        await self._stop_runs([*self._tasks, *self._orphans])
        for jobs in self._jobs.values():
            for job in jobs.values():
                job.output.close()
        self._state.close()

    # -- timing ------------------------------------------------------------------

    def _schedule(self, job: _Job, due: datetime | None) -> None:
        job.due = due.astimezone(UTC) if due is not None else None
        self._times.set(job, job.due)

    def _arm(self) -> None:
        if self._closed:
            self._times.cancel()
        else:
            self._times.arm()

    def _follow_backward_jump(self, now: datetime) -> None:
        back = self._times.fell_back(now)
        if back <= JUMP_TOLERANCE:
            return
        correction = back > BIG_JUMP
        log.warning("cron: the wall clock moved back by %.0fs; %s", back,
                    "every job follows it" if correction else "wildcard jobs follow it")
        for jobs in self._jobs.values():
            for job in jobs.values():
                if job.due is not None and (correction or not job.spec.entry.fixed_time):
                    job.handled = now
                    self._schedule(job, next_run(job.spec.entry, now, job.zone))
                    self._remember(job)

    def _fire(self, job: _Job, now: datetime) -> None:
        """``job`` is due: schedule its next time, then run it once unless it is too late."""
        assert job.due is not None
        due, entry = job.due, job.spec.entry
        run_for: datetime | None = due
        if (now - due).total_seconds() > self.catchup:
            latest = next_run(entry, now - timedelta(seconds=self.catchup), job.zone)
            run_for = latest if latest is not None and latest <= now else None
            self._report(job, "cron_missed", f"cron missed: {job.spec.name} due at "
                         f"{_iso(due, job.zone)} (the clock jumped, the machine slept or "
                         "pikud was not running)", logging.WARNING)
        job.handled = now
        self._schedule(job, next_run(entry, now, job.zone))
        self._remember(job)
        if run_for is not None:
            self._trigger(job, run_for)

    # -- runs --------------------------------------------------------------------

    def _trigger(self, job: _Job, due: datetime) -> None:
        """A scheduled time came: start a run, within the overlap policy."""
        late = (self._clock() - due).total_seconds()
        note = f", due at {_iso(due, job.zone)}" if late > 1 else ""
        if not job.runs or job.spec.overlap == "allow":
            self._start(job, note)
        elif job.spec.overlap == "queue" and not job.queued:
            self._queue(job, f"due at {_iso(due, job.zone)}")
        else:
            reason = "a run is already queued" if job.queued else "the previous run is still going"
            job.output.write_line(f"----- run due at {_iso(due, job.zone)} skipped: {reason}")
            self._report(job, "cron_skipped",
                         f"cron skipped: {job.spec.name} due at {_iso(due, job.zone)} ({reason})")

    def _queue(self, job: _Job, why: str) -> None:
        job.queued = True
        job.output.write_line(f"----- run ({why}) queued: the previous run is still going")
        self._report(job, "cron_queued", f"cron queued: {job.spec.name} ({why}; the previous "
                     "run is still going)")

    def _start(self, job: _Job, note: str) -> datetime:
        run_id, started, entry = next(self._run_ids), self._clock(), job.spec.entry
        job.output.write_line(f"----- run started at {_iso(started, job.zone)} "
                              f"({entry.expression}{note}): {entry.command}")
        job.last = {"started": _iso(started, job.zone), "status": "running", "duration": None}
        job.last_id = run_id
        loop = asyncio.get_running_loop()
        task = loop.create_task(self._run(job, run_id, job.output), name=f"cron {job.spec.name}")
        job.runs[run_id] = _Run(task, started, loop.time())
        self._tasks[task] = job.spec.app
        task.add_done_callback(self._forget_task)
        self._report(job, "cron_started",
                     f"cron started: {job.spec.name} ({entry.expression}{note})")
        return started

    def capture(self) -> list[CronRecord]:
        """The runs going on, for a re-exec (handover.py): each one's process and pipe."""
        records = []
        for jobs in self._jobs.values():
            for job in jobs.values():
                for run_id, run in job.runs.items():
                    if run.running is None or run.running[0].exited:
                        continue
                    child, reader = run.running
                    pipe = reader.fd if reader is not None and not reader.closed.done() else None
                    records.append(CronRecord(
                        job.spec.app, job.spec.kind, run_id, child.pid, child.spawn_id, pipe,
                        run.started.isoformat(), time.monotonic() - (
                            asyncio.get_running_loop().time() - run.t0)))
        return records

    def adopt(self, records: Iterable[CronRecord]) -> None:
        """Carry on the runs the previous image started (after the apps' jobs are set):
        each is watched to its end, within what is left of its timeout. A run whose
        kind is gone is stopped."""
        loop = asyncio.get_running_loop()
        for record in records:
            child = Child.adopt(record.pid, record.spawn_id)
            job = self._jobs.get(record.app, {}).get(record.kind)
            reader = (PipeReader(record.pipe, job.output.write_line if job else _drop)
                      if record.pipe is not None else None)
            name = f"{record.app}:{record.kind}"
            if job is None:
                log.warning("cron: %s run %d is no longer scheduled; stopping it", name,
                            record.run_id)
                task = loop.create_task(_stop_unscheduled(child, reader, job_timeout=0.0),
                                        name=f"cron {name}")
                self._orphans.add(task)
                task.add_done_callback(self._orphans.discard)
                continue
            elapsed = max(time.monotonic() - record.t0, 0.0)
            started = parse_time(record.started) or self._clock()
            task = loop.create_task(self._run(job, record.run_id, job.output, (child, reader),
                                              elapsed), name=f"cron {name}")
            job.runs[record.run_id] = _Run(task, started, loop.time() - elapsed, (child, reader))
            job.last = {"started": _iso(started, job.zone), "status": "running",
                        "duration": None}
            job.last_id = max(job.last_id, record.run_id)
            self._tasks[task] = record.app
            task.add_done_callback(self._forget_task)
            self._report(job, "cron_adopted", f"cron adopted: {name} run {record.run_id} "
                         f"(pid {record.pid}, running for {elapsed:.1f}s)")
        self._run_ids = itertools.count(max((r.run_id for r in records), default=0) + 1)

    def _forget_task(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)

    async def _run(self, job: _Job, run_id: int, output: LogFile,
                   adopted: Running | None = None, elapsed: float = 0.0) -> None:
        """One run, to its end; the root of its task."""

        def running(started: Running) -> None:
            job.runs[run_id].running = started

        try:
            status, level = await run_job(job.spec, run_id, output, running, adopted, elapsed)
        except asyncio.CancelledError:
            self._finish(job, run_id, output, "stopped", logging.INFO)
            raise
        except Exception as error:      # a bug: log it, record it, keep scheduling
            log.exception("cron: %s failed", job.spec.name)
            status, level = f"failed: {error!r}", logging.ERROR
        self._finish(job, run_id, output, status, level)
        if job.queued and job.active and not self._closed:
            job.queued = False
            self._start(job, ", queued")

    def _finish(self, job: _Job, run_id: int, output: LogFile, status: str, level: int) -> None:
        run = job.runs.pop(run_id)
        duration = asyncio.get_running_loop().time() - run.t0
        output.write_line(f"----- run ended: {status} after {duration:.1f}s")
        if not job.runs or output is not job.output:
            output.close()      # reopened by the next write; keeps 1,000 idle jobs fd-free
        if job.last_id == run_id:
            job.last = {"started": _iso(run.started, job.zone), "status": status,
                        "duration": round(duration, 3)}
        app, kind = job.spec.app, job.spec.kind
        if job.active or (self._state.has(app, kind) and kind not in self._jobs.get(app, {})):
            self._remember(job)     # also after remove_app, which keeps the history
        self._report(job, "cron_ended",
                     f"cron ended: {job.spec.name} ({status} after {duration:.1f}s)", level)

    async def _stop_runs(self, tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)   # each stops its tree: SIGTERM, SIGKILL after stop_timeout

    def _retire(self, job: _Job) -> None:
        """The job is no longer wanted: no more times; a run going on may finish."""
        job.active, job.queued = False, False
        self._schedule(job, None)
        if not job.runs:
            job.output.close()

    def _log_file(self, spec: JobSpec) -> LogFile:
        return LogFile(spec.log_path, spec.kind, spec.log_max_bytes, spec.log_backups,
                       self._followers_for(spec.app))

    def _report(self, job: _Job, event: str, message: str, level: int = logging.INFO) -> None:
        log.log(level, "%s", message)
        self._on_event(job.spec.app, job.spec.name, event, message)

    def _remember(self, job: _Job) -> None:
        self._state.put(job.spec.app, job.spec.kind, {
            "schedule": job.spec.entry.expression, "tz": job.zone.key,
            "handled": job.handled.isoformat() if job.handled is not None else None,
            "last_run": job.last,
        })


def _drop(line: str) -> None:
    """The output of a run no job takes any more."""


async def _stop_unscheduled(child: Child, reader: PipeReader | None, job_timeout: float) -> None:
    with contextlib.suppress(OneShotTimeout):
        await finish_once(child, reader, timeout=job_timeout)


def _log_settings(spec: JobSpec) -> tuple[Path, int, int]:
    return spec.log_path, spec.log_max_bytes, spec.log_backups
