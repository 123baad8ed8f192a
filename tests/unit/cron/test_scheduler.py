"""The cron scheduler: real child processes, a wall clock shifted to just before a due time.

The injected clock is real time plus an offset: it flows at the speed of the
loop's timers, so a job due in 50 ms fires in 50 ms, and a test "jumps" by
changing the offset and calling ``wake()``. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pikud.cron.jobs import JobSpec, job_settings
from pikud.cron.schedule import parse_cron
from pikud.cron.scheduler import Scheduler
from pikud.errors import BadRequest, CronError, EnvError, NotFound
from pikud.procman.children import find_processes
from pikud.procman.logs import Follower

DEADLINE = 10.0
DAY = "2026-01-01T"     # a Thursday; jobs run in UTC unless a test says otherwise
GATE = "until [ -e gate ]; do sleep 0.02; done; echo released"


def at(clock_time: str) -> datetime:
    return datetime.fromisoformat(DAY + clock_time).replace(tzinfo=UTC)


class ShiftedClock:
    """Real time moved by an offset: it flows as the loop's timers do, and can jump."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def set(self, moment: datetime) -> None:
        self.offset = moment - datetime.now(UTC)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


class Recorder:
    """The scheduler's on_event sink; tests await events with a deadline."""

    def __init__(self, clock: ShiftedClock) -> None:
        self.clock = clock
        self.events: list[tuple[str, str | None, str, str, datetime]] = []
        self.changed = asyncio.Event()

    def __call__(self, app: str, process: str | None, event: str, message: str) -> None:
        self.events.append((app, process, event, message, self.clock()))
        self.changed.set()

    def of(self, event: str) -> list[str]:
        return [message for _, _, name, message, _ in self.events if name == event]

    async def wait(self, event: str, count: int = 1) -> list[str]:
        async with asyncio.timeout(DEADLINE):
            while len(self.of(event)) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.of(event)


@dataclass
class Harness:
    root: Path
    clock: ShiftedClock
    events: Recorder
    lines: list[tuple[str, str]] = field(default_factory=list)
    schedulers: list[Scheduler] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return self.root / "pikud" / "cron.json"

    def follower(self, source: str, line: str) -> None:
        self.lines.append((source, line))

    def scheduler(self, **options: Any) -> Scheduler:
        followers: set[Follower] = {self.follower}
        made = Scheduler(self.state_file, self.events, lambda app: followers, self.clock,
                         **options)
        self.schedulers.append(made)
        return made

    def spec(self, kind: str, entry: str, *, overlap: str = "skip", timeout: float | None = None,
             tz: str | None = "UTC", cwd: Path | None = None) -> JobSpec:
        env = (("PATH", os.environ.get("PATH", "/usr/bin:/bin")), ("PIKU_ROOT", str(self.root)))
        return JobSpec("app", kind, parse_cron(kind, entry), env, cwd or self.app_dir,
                       self.root / "logs" / "app" / f"{kind}.log", tz, overlap, timeout,
                       stop_timeout=2.0)

    @property
    def app_dir(self) -> Path:
        return self.root / "app"

    def release(self) -> None:
        (self.app_dir / "gate").touch()

    def log(self, kind: str) -> str:
        path = self.root / "logs" / "app" / f"{kind}.log"
        return path.read_text() if path.exists() else ""

    def leftovers(self) -> set[int]:
        return find_processes((b"PIKU_PROCESS=", f"PIKU_ROOT={self.root}".encode()))


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = ShiftedClock()
    harness = Harness(tmp_path, clock, Recorder(clock))
    harness.app_dir.mkdir()
    yield harness
    for scheduler in harness.schedulers:
        await scheduler.close()
    left = harness.leftovers()
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


# -- runs ------------------------------------------------------------------------
async def test_a_job_fires_at_its_minute_with_header_footer_and_followers(h: Harness) -> None:
    h.clock.set(at("10:00:59.95"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", "* * * * * echo hello from $PIKU_PROCESS")],
                  starting=False)
    assert cron.describe("app")[0]["next_run"] == "2026-01-01T10:01:00+00:00"
    await h.events.wait("cron_ended")
    log = h.log("cron1")
    assert ("----- run started at 2026-01-01T10:01:00+00:00 (* * * * *): "
            "echo hello from $PIKU_PROCESS") in log
    assert "hello from app:cron1" in log
    assert re.search(r"----- run ended: exit status 0 after \d+\.\ds\n$", log)
    assert [source for source, _ in h.lines] == ["cron1"] * 3
    assert [(app, process, event) for app, process, event, _, _ in h.events.events] == [
        ("app", "app:cron1", "cron_started"), ("app", "app:cron1", "cron_ended")]
    assert h.events.of("cron_started") == ["cron started: app:cron1 (* * * * *)"]
    assert re.fullmatch(r"cron ended: app:cron1 \(exit status 0 after \d+\.\ds\)",
                        h.events.of("cron_ended")[0])
    [job] = cron.describe("app")
    duration = job["last_run"].pop("duration")
    assert 0 <= duration < 5
    assert job == {
        "kind": "cron1", "schedule": "* * * * *", "command": "echo hello from $PIKU_PROCESS",
        "tz": "UTC", "next_run": "2026-01-01T10:02:00+00:00",
        "last_run": {"started": "2026-01-01T10:01:00+00:00", "status": "exit status 0"},
        "running": False, "queued": False, "overlap": "skip", "timeout": None,
    }


async def test_real_time_a_job_fires_within_its_second(h: Harness) -> None:
    """The real clock shifted so that the next minute is half a second away."""
    h.clock.set(at("10:00:59.5"))
    cron = h.scheduler()
    started = time.monotonic()
    cron.set_jobs("app", [h.spec("cron1", "* * * * * true")], starting=False)
    await h.events.wait("cron_started")
    waited = time.monotonic() - started
    late = (h.events.events[0][4] - at("10:01:00")).total_seconds()
    assert 0.4 < waited < 1.5
    assert 0 <= late < 0.2, f"fired {late:.3f}s after its minute"
    await h.events.wait("cron_ended")


async def test_the_zone_of_the_job_sets_its_times(h: Harness) -> None:
    h.clock.set(at("10:00:00"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", "30 2 * * * true", tz="Europe/Berlin")],
                  starting=False)
    [job] = cron.describe("app")
    assert (job["tz"], job["next_run"]) == ("Europe/Berlin", "2026-01-02T02:30:00+01:00")


async def test_overlap_skip_does_not_start_a_second_run(h: Harness) -> None:
    h.clock.set(at("10:00:59.95"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", f"* * * * * {GATE}")], starting=False)
    await h.events.wait("cron_started")
    h.clock.set(at("10:01:59.95"))
    cron.wake()
    assert await h.events.wait("cron_skipped") == [
        "cron skipped: app:cron1 due at 2026-01-01T10:02:00+00:00 "
        "(the previous run is still going)"]
    assert cron.describe("app")[0]["running"]
    assert ("----- run due at 2026-01-01T10:02:00+00:00 skipped: the previous run is still "
            "going") in h.log("cron1")
    h.release()
    await h.events.wait("cron_ended")
    assert len(h.events.of("cron_started")) == 1


async def test_overlap_allow_runs_side_by_side(h: Harness) -> None:
    h.clock.set(at("10:00:59.95"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", f"* * * * * {GATE}", overlap="allow")],
                  starting=False)
    await h.events.wait("cron_started")
    h.clock.set(at("10:01:59.95"))
    cron.wake()
    await h.events.wait("cron_started", 2)
    assert not h.events.of("cron_ended")
    h.release()
    await h.events.wait("cron_ended", 2)
    assert len(re.findall(r"^\S+ released$", h.log("cron1"), re.MULTILINE)) == 2


async def test_overlap_queue_runs_one_more_right_after(h: Harness) -> None:
    h.clock.set(at("10:00:59.95"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", f"* * * * * {GATE}", overlap="queue")],
                  starting=False)
    await h.events.wait("cron_started")
    h.clock.set(at("10:01:59.95"))
    cron.wake()
    await h.events.wait("cron_queued")
    assert cron.describe("app")[0]["queued"]
    h.clock.set(at("10:02:59.95"))
    cron.wake()
    assert await h.events.wait("cron_skipped") == [
        "cron skipped: app:cron1 due at 2026-01-01T10:03:00+00:00 (a run is already queued)"]
    h.release()
    await h.events.wait("cron_ended", 2)
    assert len(h.events.of("cron_started")) == 2
    assert "(* * * * *, queued): " + GATE in h.log("cron1")
    assert not cron.describe("app")[0]["queued"]


async def test_timeout_stops_the_whole_tree_and_says_so(h: Harness) -> None:
    h.clock.set(at("10:00:59.95"))
    cron = h.scheduler()
    daemonizes = "setsid sleep 30 & echo started; sleep 30"
    cron.set_jobs("app", [h.spec("cron1", f"* * * * * {daemonizes}", timeout=0.3)],
                  starting=False)
    [ended] = await h.events.wait("cron_ended")
    assert ended.startswith("cron ended: app:cron1 (timed out (killed by SIGTERM) after 0.")
    assert re.search(r"----- run ended: timed out \(killed by SIGTERM\) after 0\.\ds\n$",
                     h.log("cron1"))
    assert cron.describe("app")[0]["last_run"]["status"] == "timed out (killed by SIGTERM)"
    assert not h.leftovers()


async def test_a_run_that_cannot_start_is_recorded(h: Harness) -> None:
    h.clock.set(at("10:00:00"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", "0 0 1 1 * true", cwd=h.root / "gone")],
                  starting=False)
    await cron.run_now("app", "cron1")
    [ended] = await h.events.wait("cron_ended")
    assert "failed to start: " in ended and "No such file or directory" in ended


async def test_reboot_runs_once_when_the_app_starts(h: Harness) -> None:
    h.clock.set(at("10:00:00"))
    cron = h.scheduler()
    jobs = [h.spec("cron1", "@reboot echo booted"), h.spec("cron2", "0 0 1 1 * true")]
    cron.set_jobs("app", jobs, starting=True)
    assert await h.events.wait("cron_ended") == [
        h.events.of("cron_ended")[0]]
    assert "(@reboot): echo booted" in h.log("cron1")
    assert "booted" in h.log("cron1")
    cron.set_jobs("app", jobs, starting=False)          # a deploy or config change
    assert [job["next_run"] for job in cron.describe("app")] == [
        None, "2027-01-01T00:00:00+00:00"]
    assert len(h.events.of("cron_started")) == 1
    cron.set_jobs("app", jobs, starting=True)           # the app starts again
    await h.events.wait("cron_ended", 2)


# -- state across a daemon restart ----------------------------------------------------
async def test_history_and_schedule_survive_a_restart(h: Harness) -> None:
    jobs = [h.spec("cron1", "* * * * * echo one"), h.spec("cron2", "0 * * * * echo hourly")]
    h.clock.set(at("10:00:59.95"))
    first = h.scheduler()
    first.set_jobs("app", jobs, starting=False)
    await h.events.wait("cron_ended")
    await first.close()
    saved = json.loads(h.state_file.read_text())["apps"]["app"]
    assert saved["cron1"]["last_run"]["status"] == "exit status 0"

    # Restarted within the same minute: the 10:01 run is not repeated.
    h.clock.set(at("10:01:00.5"))
    second = h.scheduler()
    second.set_jobs("app", jobs, starting=False)
    described = {job["kind"]: job for job in second.describe("app")}
    assert described["cron1"]["next_run"] == "2026-01-01T10:02:00+00:00"
    assert described["cron1"]["last_run"]["status"] == "exit status 0"
    assert described["cron1"]["last_run"]["started"] == "2026-01-01T10:01:00+00:00"
    assert described["cron2"]["next_run"] == "2026-01-01T11:00:00+00:00"
    await second.close()

    # Down across 10:02 for less than a minute: that run is caught up, once.
    h.clock.set(at("10:02:30"))
    third = h.scheduler()
    third.set_jobs("app", jobs, starting=False)
    await h.events.wait("cron_ended", 2)
    assert ("----- run started at 2026-01-01T10:02:30+00:00 (* * * * *, due at "
            "2026-01-01T10:02:00+00:00): echo one") in h.log("cron1")
    assert third.describe("app")[0]["next_run"] == "2026-01-01T10:03:00+00:00"
    await third.close()

    # Down across 11:00 by five minutes: missed, reported, not run.
    h.clock.set(at("11:05:00"))
    fourth = h.scheduler()
    fourth.set_jobs("app", [jobs[1]], starting=False)
    assert await h.events.wait("cron_missed") == [
        "cron missed: app:cron2 due at 2026-01-01T11:00:00+00:00 (the clock jumped, the "
        "machine slept or pikud was not running)"]
    assert fourth.describe("app")[0]["next_run"] == "2026-01-01T12:00:00+00:00"
    assert len(h.events.of("cron_started")) == 2


async def test_an_unreadable_state_file_is_ignored(h: Harness) -> None:
    h.state_file.parent.mkdir(parents=True)
    h.state_file.write_text("{not json")
    h.clock.set(at("10:00:00"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", "5 * * * * true")], starting=False)
    assert cron.describe("app")[0]["last_run"] is None
    await cron.close()
    assert json.loads(h.state_file.read_text())["apps"]["app"]["cron1"]["schedule"] == (
        "5 * * * *")


# -- clock changes ------------------------------------------------------------------
async def test_a_jump_forward_runs_once_not_a_burst(h: Harness) -> None:
    h.clock.set(at("10:00:30"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", "* * * * * true"), h.spec("cron2", "0 * * * * true")],
                  starting=False)
    h.clock.set(at("12:02:20"))        # the machine slept for two hours
    cron.wake()
    await h.events.wait("cron_ended")
    assert h.events.of("cron_missed") == [
        "cron missed: app:cron1 due at 2026-01-01T10:01:00+00:00 (the clock jumped, the "
        "machine slept or pikud was not running)",
        "cron missed: app:cron2 due at 2026-01-01T11:00:00+00:00 (the clock jumped, the "
        "machine slept or pikud was not running)"]
    assert h.events.of("cron_started") == [     # 12:02 is within the last minute; 12:00 is not
        "cron started: app:cron1 (* * * * *, due at 2026-01-01T12:02:00+00:00)"]
    assert [job["next_run"] for job in cron.describe("app")] == [
        "2026-01-01T12:03:00+00:00", "2026-01-01T13:00:00+00:00"]


async def test_a_jump_back_moves_wildcard_jobs_and_corrections_move_all(h: Harness) -> None:
    h.clock.set(at("10:00:30"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", "*/5 * * * * true"), h.spec("cron2", "30 9 * * * true")],
                  starting=False)

    def next_runs() -> list[str]:
        return [job["next_run"] for job in cron.describe("app")]

    assert next_runs() == ["2026-01-01T10:05:00+00:00", "2026-01-02T09:30:00+00:00"]
    h.clock.set(at("09:00:30"))        # back one hour: 09:30 already ran today
    cron.wake()
    assert next_runs() == ["2026-01-01T09:05:00+00:00", "2026-01-02T09:30:00+00:00"]
    h.clock.set(at("05:00:30"))        # back four more hours: a correction
    cron.wake()
    assert next_runs() == ["2026-01-01T05:05:00+00:00", "2026-01-01T09:30:00+00:00"]
    assert not h.events.of("cron_started")


# -- the API --------------------------------------------------------------------------
async def test_run_now_respects_the_overlap_policy(h: Harness) -> None:
    h.clock.set(at("10:00:00"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", f"0 0 1 1 * {GATE}"),
                          h.spec("cron2", f"0 0 1 1 * {GATE}", overlap="queue")],
                  starting=False)
    assert await cron.run_now("app", "cron1") == {
        "kind": "cron1", "started": "2026-01-01T10:00:00+00:00", "queued": False}
    assert "(0 0 1 1 *, run by hand): " + GATE in h.log("cron1")
    with pytest.raises(BadRequest, match=r"^app:cron1 is already running \(since "
                       r"2026-01-01T10:00:00\+00:00\); PIKU_CRON_OVERLAP=skip$"):
        await cron.run_now("app", "cron1")
    with pytest.raises(NotFound, match="app 'app' has no cron job 'cron9'"):
        await cron.run_now("app", "cron9")
    with pytest.raises(NotFound):
        await cron.run_now("other", "cron1")
    assert (await cron.run_now("app", "cron2"))["queued"] is False
    assert await cron.run_now("app", "cron2") == {"kind": "cron2", "started": None,
                                                  "queued": True}
    with pytest.raises(BadRequest, match="and another run is queued"):
        await cron.run_now("app", "cron2")
    h.release()
    await h.events.wait("cron_ended", 3)


async def test_remove_app_stops_its_runs_and_keeps_its_history(h: Harness) -> None:
    h.clock.set(at("10:00:00"))
    cron = h.scheduler()
    jobs = [h.spec("cron1", "* * * * * sleep 30")]
    cron.set_jobs("app", jobs, starting=False)
    await cron.run_now("app", "cron1")
    async with asyncio.timeout(DEADLINE):
        # The cron run's process appears with no event of its own: a bounded poll.
        while not h.leftovers():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    await cron.remove_app("app")
    assert cron.describe("app") == []
    assert re.fullmatch(r"cron ended: app:cron1 \(stopped after \d+\.\ds\)",
                        h.events.of("cron_ended")[0])
    assert not h.leftovers()
    h.clock.set(at("10:05:30"))        # started again later: no catch-up, history kept
    cron.set_jobs("app", jobs, starting=False)
    [job] = cron.describe("app")
    assert (job["next_run"], job["last_run"]["status"]) == ("2026-01-01T10:06:00+00:00",
                                                            "stopped")
    assert not h.events.of("cron_missed")


async def test_set_jobs_keeps_unchanged_times_and_drops_removed_kinds(h: Harness) -> None:
    h.clock.set(at("10:00:00"))
    cron = h.scheduler()
    cron.set_jobs("app", [h.spec("cron1", "*/5 * * * * true"), h.spec("cron2", "0 * * * * a")],
                  starting=False)
    h.clock.set(at("10:02:00"))
    cron.set_jobs("app", [h.spec("cron1", "*/5 * * * * changed command"),
                          h.spec("cron3", "@hourly true")], starting=False)
    assert [(job["kind"], job["next_run"], job["command"]) for job in cron.describe("app")] == [
        ("cron1", "2026-01-01T10:05:00+00:00", "changed command"),
        ("cron3", "2026-01-01T11:00:00+00:00", "true")]
    cron.set_jobs("app", [h.spec("cron1", "1 * * * * true")], starting=False)
    assert cron.describe("app")[0]["next_run"] == "2026-01-01T11:01:00+00:00"
    cron.set_jobs("app", [], starting=False)
    assert cron.describe("app") == []
    await cron.close()
    assert json.loads(h.state_file.read_text())["apps"] == {}


# -- settings -------------------------------------------------------------------------
SETTINGS = [
    ({}, (None, "skip", None)),
    ({"TZ": "Europe/Berlin", "PIKU_CRON_OVERLAP": " Queue", "PIKU_CRON_TIMEOUT": "2m"},
     ("Europe/Berlin", "queue", 120.0)),
    ({"TZ": ":UTC", "PIKU_CRON_OVERLAP": "allow", "PIKU_CRON_TIMEOUT": "1500ms"},
     ("UTC", "allow", 1.5)),
    ({"TZ": "", "PIKU_CRON_TIMEOUT": "0"}, (None, "skip", None)),
]


@pytest.mark.parametrize(("env", "expected"), SETTINGS)
def test_job_settings(env: dict[str, str], expected: tuple[Any, ...]) -> None:
    assert job_settings(env) == expected


BAD_SETTINGS: list[tuple[dict[str, str], type[Exception], str]] = [
    ({"TZ": "Nowhere/Land"}, CronError, "TZ: unknown time zone 'Nowhere/Land'"),
    ({"PIKU_CRON_OVERLAP": "sometimes"}, CronError,
     "PIKU_CRON_OVERLAP: expected skip, allow or queue, got 'sometimes'"),
    ({"PIKU_CRON_TIMEOUT": "soon"}, EnvError, "PIKU_CRON_TIMEOUT: expected a number of seconds"),
]


@pytest.mark.parametrize(("env", "error", "message"), BAD_SETTINGS)
def test_bad_job_settings_name_the_key(env: dict[str, str], error: type[Exception],
                                       message: str) -> None:
    with pytest.raises(error) as caught:
        job_settings(env)
    assert str(caught.value).startswith(message)
    assert caught.value.key == next(iter(env))


def test_public_names() -> None:
    assert callable(Scheduler.set_jobs) and callable(Scheduler.describe)
    names: list[Callable[..., Any]] = [Scheduler.remove_app, Scheduler.run_now, Scheduler.close]
    assert all(asyncio.iscoroutinefunction(name) for name in names)
