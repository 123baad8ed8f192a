"""An App built in-process from its services, with real children and no daemon.

A change commits (desired state, state.json, cron jobs, the written file)
only once its processes are up: a failed one saves and schedules nothing.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from pikud.app import App, AppServices, Desired
from pikud.appsettings import AppSettings
from pikud.cron import Cron
from pikud.errors import PikudError
from pikud.events import EventLog
from pikud.paths import Paths
from pikud.procman.state import ProcessState
from pikud.traffic import Traffic

FAST = AppSettings(start_secs=0.3, backoff_base=0.05, backoff_max=0.1, start_retries=1,
                   stop_timeout=3.0)
PICKY = 'worker: test -z "$BROKEN" && exec sleep 300\ncron1: 0 0 * * * echo tick\n'

Make = Callable[[str, str], App]


class Saves:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


@pytest.fixture
def saves() -> Saves:
    return Saves()


@pytest.fixture
async def make(tmp_path: Path, saves: Saves) -> AsyncIterator[Make]:
    cron = Cron(tmp_path / "cron.json", lambda *event: None, lambda app: set())
    services = AppServices(Paths(tmp_path), {"PATH": os.environ["PATH"]}, FAST, EventLog(),
                           Traffic(None), cron, save=saves)
    made: list[App] = []

    def app(name: str, procfile: str) -> App:
        (tmp_path / "apps" / name).mkdir(parents=True)
        (tmp_path / "apps" / name / "Procfile").write_text(procfile)
        made.append(App(name, services))
        return made[-1]

    yield app
    for each in made:
        await each.stop(persist=False)
        each.log.close()
    await cron.close()
    assert not any(each.group.processes for each in made)


def pid(app: App) -> int:
    return app.group.processes[f"{app.name}:worker.1"].snapshot()["pid"]


async def test_a_start_commits_state_and_cron_jobs(make: Make, saves: Saves) -> None:
    app = make("fine", PICKY)
    await app.start()
    assert app.desired is Desired.RUNNING and app.state()["desired"] == "running"
    assert saves.count == 1
    assert [job["kind"] for job in app.cron()] == ["cron1"]
    assert pid(app)


async def test_a_failed_config_change_commits_nothing(make: Make, saves: Saves,
                                                      tmp_path: Path) -> None:
    app = make("picky", PICKY)
    await app.start()
    before, spec, jobs = pid(app), app.spec, app.cron()
    events = app.services.events.subscribe()
    with pytest.raises(PikudError, match="picky:worker.1"):
        await app.configure({"BROKEN": "1", "TZ": "Europe/Paris"}, [])
    assert saves.count == 1                     # the start's save only
    assert app.spec is spec and app.cron() == jobs
    assert not (tmp_path / "envs/picky/ENV").exists()
    assert app.own_write() == "as last applied"      # the watcher would not reload
    assert "BROKEN" not in app.live()["env"]
    async with asyncio.timeout(10):             # the worker is put back, with what ran before
        while (record := await events.get())["process"] != "picky:worker.1" or \
                record["event"] != ProcessState.RUNNING.value:
            pass
    assert pid(app) != before
    environ = await asyncio.to_thread(Path(f"/proc/{pid(app)}/environ").read_bytes)
    assert not any(word.startswith(b"BROKEN=") for word in environ.split(b"\0"))



async def test_a_hand_edit_to_what_an_earlier_config_set_deferred_is_no_own_write(
        make: Make, tmp_path: Path) -> None:
    """config:set on a stopped app waits for the start; once another change has been
    applied, writing that earlier text back by hand is an edit the watcher applies."""
    app = make("lazy", "worker: sleep 300\n")
    await app.configure({"COLOR": "blue"}, [])          # stopped: for the next start
    blue = (tmp_path / "envs/lazy/ENV").read_text()
    await app.start()
    await app.configure({"COLOR": "red"}, [])
    (tmp_path / "envs/lazy/ENV").write_text(blue)       # by hand
    assert app.own_write() is None


async def test_a_hand_edit_back_to_the_applied_text_during_a_change_is_no_own_write(
        make: Make, tmp_path: Path) -> None:
    """While config:set applies COLOR=red, ENV is put back by hand to what ran before:
    the watcher must reload once the change is done (it would run red, ENV saying blue)."""
    app = make("busy", "worker: sleep 300\n")
    await app.configure({"COLOR": "blue"}, [])
    await app.start()
    blue = (tmp_path / "envs/busy/ENV").read_text()
    events = app.services.events.subscribe()
    change = asyncio.create_task(app.configure({"COLOR": "red"}, []))
    async with asyncio.timeout(10):
        while (await events.get())["event"] != "config":
            pass
    assert app.lock.locked() and not change.done()      # the worker is being replaced
    (tmp_path / "envs/busy/ENV").write_text(blue)       # by hand
    assert app.own_write() is None
    await change
