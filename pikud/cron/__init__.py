"""Cron run by the daemon: Procfile ``cron*`` entries parsed and checked (schedule.py,
jobs.py), scheduled and run (scheduler.py), their history kept (state.py).

The daemon holds one ``Cron``. It makes the Scheduler at the first app with cron
entries, or at start when ``cron.json`` holds a history: a daemon whose apps have no
cron entries never imports the scheduler, datetime or croniter (about 600 KiB of RSS).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pikud.errors import NotFound

if TYPE_CHECKING:
    from pikud.cron.jobs import JobSpec
    from pikud.cron.scheduler import EventSink, Scheduler
    from pikud.handover import CronRecord
    from pikud.procman.logs import Follower


class Cron:
    """The Scheduler's API, with the Scheduler made when there is cron work to do."""

    def __init__(self, state_file: Path, on_event: EventSink,
                 followers_for: Callable[[str], set[Follower]]) -> None:
        self._made: Scheduler | None = None
        self._state_file, self._on_event, self._followers_for = (
            state_file, on_event, followers_for)
        if state_file.exists():         # a history to keep (or a corrupt one to report)
            self.scheduler()

    def scheduler(self) -> Scheduler:
        if self._made is None:
            from pikud.cron.scheduler import Scheduler  # imported on first use: see README
            self._made = Scheduler(self._state_file, self._on_event, self._followers_for)
        return self._made

    @property
    def problem(self) -> str | None:
        return self._made.problem if self._made is not None else None

    def set_jobs(self, app: str, jobs: list[JobSpec], *, starting: bool) -> None:
        if jobs or self._made is not None:
            self.scheduler().set_jobs(app, jobs, starting=starting)

    async def remove_app(self, app: str) -> None:
        if self._made is not None:
            await self._made.remove_app(app)

    async def run_now(self, app: str, kind: str) -> dict[str, Any]:
        if self._made is None:      # no app has a cron job: no scheduler is made to say so
            raise no_job(app, kind)
        return await self._made.run_now(app, kind)

    def describe(self, app: str) -> list[dict[str, Any]]:
        return self._made.describe(app) if self._made is not None else []

    def capture(self) -> list[CronRecord]:
        return self._made.capture() if self._made is not None else []

    def adopt(self, records: Iterable[CronRecord]) -> None:
        records = list(records)
        if records or self._made is not None:
            self.scheduler().adopt(records)

    async def close(self) -> None:
        if self._made is not None:
            await self._made.close()


def no_job(app: str, kind: str) -> NotFound:
    """What ``cron:run`` of a kind the app has no job for answers."""
    return NotFound(f"app {app!r} has no cron job {kind!r}")
