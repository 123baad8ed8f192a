"""AppRegistry: every app the daemon knows, their persisted desired state, boot and shutdown.

``pikud/state.json`` (written atomically on every change) holds, per app,
whether it should run and the ports its web processes were given, so a
daemon killed at any instant brings every app back as it was.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from pikud.apps import RUNNING, STOPPED, App
from pikud.appspec import AppSettings, validate_app_name
from pikud.ceilings import Ceilings
from pikud.cron import Scheduler
from pikud.atomic import write_atomic
from pikud.errors import AppNotFound, BadRequest, PikudError
from pikud.events import EventLog
from pikud.paths import Paths
from pikud.procman.children import stop_leftovers
from pikud.traffic import Traffic

log = logging.getLogger(__name__)


class AppRegistry:
    def __init__(self, paths: Paths, base_env: Mapping[str, str], app_defaults: AppSettings,
                 events: EventLog, watch: Callable[[App], None] = lambda app: None,
                 unwatch: Callable[[App], None] = lambda app: None,
                 traffic: Traffic | None = None, ceilings: Ceilings = Ceilings()) -> None:
        self.paths = paths
        self.ceilings = ceilings
        self.traffic = traffic or Traffic(None)
        self.scheduler = Scheduler(paths.state_dir / "cron.json", self._cron_event,
                                   lambda app: self.apps[app].followers)
        self.base_env = dict(base_env)
        self.app_defaults = app_defaults
        self.events = events
        self.watch, self.unwatch = watch, unwatch
        self.apps: dict[str, App] = {}

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
            self.apps[name] = App(name, self)
        return self.apps[name]

    def names(self) -> list[str]:
        apps_dir = self.paths.root / "apps"
        on_disk = {p.name for p in apps_dir.iterdir()
                   if p.is_dir() and not p.name.startswith(".")} if apps_dir.is_dir() else set()
        return sorted(on_disk | set(self.apps))

    def forget(self, app: App) -> None:
        self.apps.pop(app.name, None)
        self.save()

    def save(self) -> None:
        state = {"apps": {name: app.state() for name, app in sorted(self.apps.items())}}
        write_atomic(self.paths.state_file, json.dumps(state, indent=2) + "\n", 0o600)

    def load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.paths.state_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise BadRequest(f"{self.paths.state_file}: unreadable state: {exc}") from exc
        return dict(data.get("apps", {}))

    async def boot(self) -> None:
        """Start every app that was running when the daemon last stopped."""
        await stop_leftovers(str(self.paths.root), self.app_defaults.stop_timeout)
        starting = []
        for name, state in self.load_state().items():
            try:
                app = self.get(name)
            except (PikudError, OSError, ValueError) as exc:
                log.warning("state names app %r, which is gone: %s", name, exc)
                continue
            app.ports = {k: int(v) for k, v in state.get("ports", {}).items()}
            app.desired = state.get("desired", STOPPED)
            if app.desired == RUNNING:
                starting.append(self._boot_one(app))
        await asyncio.gather(*starting)

    async def _boot_one(self, app: App) -> None:
        """Start one app at boot; whatever goes wrong with it, the others still start."""
        try:
            await app.start(boot=True)      # runs the @reboot cron entries
        except PikudError as exc:
            app.note("error", f"{app.name}: not started at boot: {exc}", logging.ERROR)
        except Exception:
            log.exception("%s: not started at boot", app.name)

    async def shutdown(self) -> None:
        await asyncio.gather(self.scheduler.close(),
                             *(app.stop(persist=False) for app in self.apps.values()))

    def claimed(self, besides: str) -> int:
        """The processes every app but ``besides`` runs or is starting (App.claimed)."""
        return sum(app.claimed for name, app in self.apps.items() if name != besides)

    def process_count(self) -> int:
        return sum(len(app.group.processes) for app in self.apps.values())
