"""AppRegistry: every app the daemon knows, their persisted desired state, boot and shutdown.

``pikud/state.json`` (written atomically on every change) holds, per app,
whether it should run and the addresses its web processes were given (a
port, or a unix socket's path; under the key "ports", as before sockets), so
a daemon killed at any instant brings every app back as it was.
"""

# Design notes:
# - Boot has two halves. ``load()`` reads state.json and builds every App it
#   names with its desired state, with no await, before the control socket
#   takes requests: so no request can see (or save) an app that boot has not
#   read. ``boot()`` then stops what a killed pikud left running; requests
#   that act on apps wait for that (``settled``), since a start beside the
#   old processes would find their ports taken.
# - A save that fails (a full disk) is not an error of the request that
#   caused it: the processes have already changed, and the API must say what
#   runs. It is logged, shown in every app's ``problems`` and retried on a
#   timer with a capped backoff, and by every later save.

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pikud.app import App, AppServices, Desired, remove_tree
from pikud.appsettings import AppSettings
from pikud.appspec import AppSpec, validate_app_name
from pikud.atomic import write_atomic
from pikud.ceilings import Ceilings
from pikud.cron import Cron
from pikud.deploy.releases import ReleaseStore
from pikud.errors import AppNameError, AppNotFound, PikudError, Starting
from pikud.events import EventLog
from pikud.handover import Record, pids
from pikud.paths import Paths
from pikud.procman.children import claim, stop_leftovers
from pikud.procman.keeper import Keeper
from pikud.procman.policy import Backoff
from pikud.statefile import json_object, load_json
from pikud.traffic import Traffic

log = logging.getLogger(__name__)

SAVE_RETRY = Backoff(1.0, 60.0)     # seconds between attempts to save state.json
SETTLE_WAIT = 20.0          # how long an action waits for boot to stop a killed pikud's processes
BOOT_RETRY = Backoff(5.0, 300.0)    # a start that failed at boot is tried again


def parse_state(data: Any) -> dict[str, dict[str, Any]]:
    """state.json's ``apps``: name -> {"desired", "ports"}; ValueError on another shape."""
    apps = json_object(json_object(data).get("apps", {}))
    parsed = {}
    for name, state in apps.items():
        desired = json_object(state).get("desired", Desired.STOPPED.value)
        try:
            wanted = Desired(desired)
        except ValueError:
            raise ValueError(f"app {name!r}: desired must be {Desired.RUNNING.value} or "
                             f"{Desired.STOPPED.value}, got {desired!r}") from None
        ports = {str(k): v if isinstance(v, str) else int(v)
                 for k, v in json_object(state.get("ports", {})).items()}
        parsed[name] = {"desired": wanted, "ports": ports}
    return parsed


class AppRegistry:
    def __init__(self, paths: Paths, base_env: Mapping[str, str], app_defaults: AppSettings,
                 events: EventLog, watch: Callable[[str, AppSpec], None] = lambda app, spec: None,
                 unwatch: Callable[[str], None] = lambda app: None,
                 traffic: Traffic | None = None, ceilings: Ceilings | None = None,
                 keeper: Keeper | None = None) -> None:
        self.paths = paths
        self.traffic = traffic or Traffic(None)
        self.cron = Cron(paths.state_dir / "cron.json", self._cron_event,
                         lambda app: self.apps[app].followers)
        self.events = events
        # Shared by every App: a SIGHUP's new defaults and ceilings reach them all.
        self.services = AppServices(
            paths, dict(base_env), app_defaults, events, self.traffic, self.cron,
            ceilings or Ceilings(), save=self.save, claimed=self.claimed, problems=self.problems,
            forget=self.forget, watch=watch, unwatch=unwatch, keeper=keeper or Keeper())
        self.apps: dict[str, App] = {}
        self._unloaded: dict[str, dict[str, Any]] = {}  # in state.json, not loadable at boot
        self.settled = asyncio.Event()      # boot has stopped a killed pikud's processes
        self._noted: list[str] = []         # state files found corrupt and set aside
        self._unsaved: str | None = None    # why state.json could not be written
        self._save_failures = 0
        self._retry: asyncio.TimerHandle | None = None
        self._boot_retries: set[asyncio.Task[None]] = set()   # apps whose boot start failed

    def _cron_event(self, app: str, process: str | None, event: str, message: str) -> None:
        """A cron run started or ended: into the app's pikud.log and /events, like any event."""
        if app in self.apps:
            self.apps[app].note(event, message, process=process)
        else:
            self.events.emit(app, process, event, message)

    def get(self, name: str, *, pushed: bool = False) -> App:
        """The app ``name``; it exists once apps/APP does, or (``pushed``) its repo does."""
        validate_app_name(name)
        if name not in self.apps:
            exists = self.paths.app(name).is_dir() or (
                pushed and (self.paths.repo(name) / "HEAD").exists())
            if not exists:
                raise AppNotFound(name)
            app = self.apps[name] = App(name, self.services)
            if name in self._unloaded:          # back since boot: as state.json had it
                state = self._unloaded.pop(name)
                app.addresses, app.desired = state["ports"], state["desired"]
        return self.apps[name]

    def names(self) -> list[str]:
        apps_dir = self.paths.root / "apps"
        on_disk = {p.name for p in apps_dir.iterdir()
                   if p.is_dir() and not p.name.startswith(".")} if apps_dir.is_dir() else set()
        return sorted(on_disk | set(self.apps))

    def forget(self, name: str) -> None:
        self.apps.pop(name, None)
        self._unloaded.pop(name, None)
        self.save()

    def problems(self) -> list[str]:
        """What every app should know: state files set aside, a save that is failing."""
        unsaved = [f"pikud/state.json could not be saved ({self._unsaved}); pikud retries, "
                   "and a restart of pikud before it succeeds brings back older desired "
                   "states"] if self._unsaved else []
        cron = [self.cron.problem] if self.cron.problem else []
        return self._noted + cron + unsaved

    def save(self) -> None:
        """Write state.json; a failure is logged and retried, never raised (Design notes)."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        apps = {name: dict(state, desired=state["desired"].value)     # as state.json had it
                for name, state in self._unloaded.items()}
        apps |= {name: app.state() for name, app in self.apps.items()}
        state = {"apps": dict(sorted(apps.items()))}
        try:
            write_atomic(self.paths.state_file, json.dumps(state, indent=2) + "\n", 0o600)
        except OSError as exc:
            delay = SAVE_RETRY.delay(self._save_failures + 1)
            if self._unsaved is None:
                log.error("state not saved: %s: %s; retrying in %gs and at every change",
                          self.paths.state_file, exc, delay)
            self._unsaved, self._save_failures = str(exc), self._save_failures + 1
            self._retry = asyncio.get_running_loop().call_later(delay, self.save)
            return
        if self._unsaved is not None:
            log.warning("state saved again: %s after %d failed attempts", self.paths.state_file,
                        self._save_failures)
        self._unsaved, self._save_failures = None, 0

    def load(self) -> None:
        """Build every app state.json names, with its desired state and ports (no awaits).

        Called before the control socket takes requests. A corrupt state.json
        is set aside and rebuilt from the layout: every app with code in
        apps/ is taken as running, as piku runs every deployed app.
        """
        loaded = load_json(self.paths.state_file, parse_state, "pikud/state.json")
        states = loaded.data or {}
        if loaded.problem is not None:
            states = {name: {"desired": Desired.RUNNING, "ports": {}} for name in self.names()}
            self._noted.append(f"{loaded.problem}; every app with code in apps/ was taken as "
                               "running")
        for name, state in states.items():
            try:
                app = self.get(name)
            except (PikudError, OSError) as exc:
                log.warning("state names app %r, which is gone: %s (its state is kept)",
                            name, exc)
                self._unloaded[name] = state
                continue
            app.addresses, app.desired = state["ports"], state["desired"]
        if loaded.problem is not None:
            self.save()

    async def settle(self) -> None:
        """Wait (at most SETTLE_WAIT) for boot to let requests act on apps."""
        if not self.settled.is_set():
            try:
                await asyncio.wait_for(self.settled.wait(), SETTLE_WAIT)
            except TimeoutError:
                raise Starting(SETTLE_WAIT) from None

    async def boot(self, adopted: set[str] | None = None) -> None:
        """Stop what a killed pikud left running, then start every app that should run.

        After a re-exec (``adopted``: the apps whose processes were taken over)
        nothing was left behind: no leftovers are stopped, and only the apps
        that should run and were not adopted start; an adopted app's ENV or
        SCALING edited during the re-exec is applied. After a crash, under
        systemd, the processes the keeper can adopt are spared and taken over
        by the slots that start them; those no slot took are stopped once every
        app has started (procman/keeper.py).
        """
        timeout = self.services.defaults.stop_timeout
        keeper = self.services.keeper
        if adopted is None:
            await asyncio.gather(
                stop_leftovers(str(self.paths.root), timeout, keep=keeper.adopting),
                self._prune_unrecorded())
        self.settled.set()
        await asyncio.gather(*(self._boot_one(app) for app in list(self.apps.values())
                               if app.running and app.name not in (adopted or ())),
                             *(self.apps[name].recheck_files() for name in adopted or ()))
        await keeper.finish(timeout)

    async def adopt(self, record: Record) -> set[str]:
        """Take over the apps and cron runs a previous image hands over (handover.py);
        returns the names of the apps taken over. An app that cannot be built any
        more (its folder is gone) is logged; boot leaves its processes to the next
        plain start's leftover stop."""
        claim(pids(record))         # before any await: no orphan sweep may reap them
        adopted = set()
        for app_record in record.apps:
            try:
                app = self.get(app_record.name)
                await app.adopt(app_record)
            except (PikudError, OSError) as exc:
                log.error("re-exec: %s not adopted: %s", app_record.name, exc)
                continue
            adopted.add(app.name)
        self.cron.adopt(record.cron)
        return adopted

    async def _prune_unrecorded(self) -> None:
        """Remove release folders no record names (a push killed with pikud), app by app."""
        root = self.paths.root / "releases"
        for folder in sorted(root.iterdir()) if root.is_dir() else ():
            app = self.apps.get(folder.name)
            try:
                store = app.releases if app is not None else ReleaseStore(
                    self.paths, validate_app_name(folder.name))
            except AppNameError:
                continue
            for path in store.unrecorded():
                log.warning("removing release folder %s: no release record names it", path)
                await remove_tree(path)

    async def _boot_one(self, app: App) -> None:
        """Start one app at boot; whatever goes wrong with it, the others still start.

        A start that fails (a spawn refused for want of descriptors or memory, say)
        is tried again in a task of its own, so no app wanted running is left with
        neither a process nor a timer.
        """
        if not await self._start_at_boot(app):
            retry = asyncio.create_task(self._retry_boot(app), name=f"boot retry {app.name}")
            self._boot_retries.add(retry)
            retry.add_done_callback(self._boot_retries.discard)

    async def _start_at_boot(self, app: App) -> bool:
        try:
            await app.start(boot=True)      # runs the @reboot cron entries
            return True
        except PikudError as exc:
            app.note("error", f"{app.name}: not started at boot: {exc}", logging.ERROR)
        except Exception:
            log.exception("%s: not started at boot", app.name)
        return False

    async def _retry_boot(self, app: App) -> None:
        """Start ``app`` again after BOOT_RETRY's growing delays, until it runs or is
        acted on by hand (stopped, started, destroyed) meanwhile."""
        for attempt in itertools.count(1):
            delay = BOOT_RETRY.delay(attempt)
            app.note("retry", f"{app.name}: starting again in {delay:g}s", logging.WARNING)
            await asyncio.sleep(delay)
            if not app.running or app.group.processes or self.apps.get(app.name) is not app:
                return
            if await self._start_at_boot(app):
                app.note("start", f"{app.name}: started after failing at boot")
                return

    async def shutdown(self) -> None:
        for retry in list(self._boot_retries):
            retry.cancel()
        await asyncio.gather(self.cron.close(),
                             *(app.stop(persist=False) for app in self.apps.values()))

    def claimed(self, besides: str) -> int:
        """The processes every app but ``besides`` runs or is starting (App.claimed)."""
        return sum(app.claimed for name, app in self.apps.items() if name != besides)

    def process_count(self) -> int:
        return sum(len(app.group.processes) for app in self.apps.values())
