"""Apps: what the control API acts on.

An ``App`` turns its parsed files (``AppSpec``) into a set of ``ProcessSpec``s
and has its ``ProcessGroup`` apply them; every action takes the app's lock,
so two requests for one app never interleave while different apps proceed
in parallel. The ``AppRegistry`` finds apps, keeps the desired state of each
(running or stopped) in ``pikud/state.json``, brings them back at boot and
stops them all at shutdown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import socket
from collections.abc import Callable, Mapping
from typing import Any

from pikud.appspec import (WEB_KINDS, AppSettings, AppSpec, format_env, format_scaling, live_env,
                           load_spec, parse_env, parse_scale_args, supervised_kinds,
                           validate_app_name)
from pikud.atomic import write_atomic
from pikud.errors import AppNotFound, BadRequest, EnvError, PikudError
from pikud.events import EventLog
from pikud.paths import Paths
from pikud.procman.children import stop_leftovers
from pikud.procman.group import ProcessGroup
from pikud.procman.logs import Follower, LogFile, log_files, tail
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ProcessSpec

log = logging.getLogger(__name__)

RUNNING, STOPPED = "running", "stopped"
# wsgi/asgi entries name a module, not a command: they need the WSGI/ASGI
# server support of issue #4. Until then they are reported, not started.
NOT_YET_SERVED = ("wsgi", "asgi")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class App:
    def __init__(self, name: str, registry: AppRegistry) -> None:
        self.name = name
        self.registry = registry
        self.paths = registry.paths
        self.lock = asyncio.Lock()
        self.desired = STOPPED
        self.ports: dict[str, int] = {}
        self.spec: AppSpec | None = None
        self.followers: set[Follower] = set()
        self.group = ProcessGroup(self._on_event, self.followers)
        defaults = registry.app_defaults
        self.log = LogFile(self.paths.log_dir(name) / "pikud.log", "pikud",
                           defaults.log_max_bytes, defaults.log_backups, self.followers)

    # -- building the desired state --------------------------------------------

    def _on_event(self, process: str | None, event: str, message: str) -> None:
        self.registry.events.emit(self.name, process, event, message)
        self.log.write_line(message)

    def note(self, event: str, message: str, level: int = logging.INFO) -> None:
        """An app-level event: logged, in the app's pikud.log and in /events."""
        log.log(level, "%s", message)
        self._on_event(None, event, message)

    def load(self, **candidate: str) -> AppSpec:
        """Parse the app's files (or a candidate ``overrides``/``scaling_text``), or raise."""
        return load_spec(self.paths, self.name, self.registry.base_env,
                         self.registry.app_defaults, **candidate)

    def process_specs(self, spec: AppSpec) -> dict[str, ProcessSpec]:
        """The ProcessSpec of every slot the spec asks for (``app:kind.N``)."""
        env = live_env(spec, self.paths, self.registry.base_env)
        s = spec.settings
        policy = RestartPolicy(s.start_secs, s.backoff_base, s.backoff_max,
                               s.start_retries, s.fatal_cooloff)
        specs: dict[str, ProcessSpec] = {}
        for kind in supervised_kinds(spec.procfile):
            if kind in NOT_YET_SERVED:
                continue
            for index in range(1, spec.scaling[kind] + 1):
                name = f"{self.name}:{kind}.{index}"
                process_env = dict(env, PROC_TYPE=kind, PIKU_ROOT=str(self.paths.root))
                if kind in WEB_KINDS:
                    process_env["PORT"] = spec.env.get("PORT") or str(self._port(name))
                specs[name] = ProcessSpec(
                    name=name, kind=kind, index=index, command=spec.procfile.entries[kind],
                    env=tuple(sorted(process_env.items())), cwd=self.paths.app(self.name),
                    log_path=self.paths.log_dir(self.name) / f"{kind}.{index}.log",
                    stop_timeout=s.stop_timeout, policy=policy,
                    log_max_bytes=s.log_max_bytes, log_backups=s.log_backups)
        return specs

    def _port(self, name: str) -> int:
        """A loopback port kept per slot, so restarts keep it."""
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def _prepare(self, spec: AppSpec) -> None:
        for warning in spec.warnings:
            self.note("warning", f"{self.name}: {warning}", logging.WARNING)
        for kind in NOT_YET_SERVED:
            if kind in spec.procfile.entries:
                self.note("warning", f"{self.name}: the {kind!r} kind is not served by this "
                          "version of pikud yet; it was not started", logging.WARNING)
        for path in (self.paths.log_dir(self.name), self.paths.data(self.name),
                     self.paths.cache(self.name), self.paths.env_dir(self.name)):
            path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.paths.live_env_file(self.name),
                     format_env(live_env(spec, self.paths, self.registry.base_env)), 0o600)
        self.spec = spec
        self.registry.watch(self)

    async def _run(self, spec: AppSpec, *, restart_all: bool = False) -> None:
        """Apply ``spec`` (a spec error has already been raised by load())."""
        self._prepare(spec)
        self.desired = RUNNING
        self.registry.save()
        desired = self.process_specs(spec)
        if restart_all:
            await self.group.replace({n: s for n, s in desired.items()
                                      if n in self.group.processes})
        await self.group.apply(desired)
        self.group.retry()

    # -- actions (each under the app lock) ---------------------------------------

    async def deploy(self) -> None:
        """Run the code in apps/APP: reread every file, then apply (rolling)."""
        async with self.lock:
            spec = self.load()
            self.note("deploy", f"{self.name}: deploying")
            await self._run(spec)

    async def start(self) -> None:
        async with self.lock:
            await self._run(self.load())

    async def restart(self) -> None:
        """Replace every process, one at a time."""
        async with self.lock:
            spec = self.load()
            self.note("restart", f"{self.name}: restarting")
            await self._run(spec, restart_all=True)

    async def stop(self, *, persist: bool = True) -> None:
        """Stop every process; ``persist=False`` (daemon shutdown) keeps the desired state."""
        async with self.lock:
            if persist:
                self.desired = STOPPED
                self.registry.save()
            await self.group.stop()

    async def scale(self, args: Mapping[str, Any]) -> None:
        """Change kind counts; only the difference is started or stopped."""
        async with self.lock:
            spec = self.load()
            kinds = supervised_kinds(spec.procfile)
            changes = parse_scale_args([f"{k}={v}" for k, v in args.items()], kinds)
            text = format_scaling(dict(spec.scaling, **changes))
            spec = self.load(scaling_text=text)
            write_atomic(self.paths.scaling_file(self.name), text)
            self.note("scale", f"{self.name}: scaled to "
                      + ", ".join(f"{k}={v}" for k, v in spec.scaling.items()))
            if self.desired == RUNNING:
                await self._run(spec)

    async def reload_files(self, why: str) -> None:
        """A watched file changed: apply a valid edit, report and ignore a bad one."""
        async with self.lock:
            if self.desired != RUNNING:
                return
            try:
                spec = self.load()
            except PikudError as exc:
                self.note("error", f"{self.name}: ignored an edit, what runs is unchanged: "
                          f"{exc}", logging.WARNING)
                return
            if why == "touch":
                self.note("reload", f"{self.name}: touch-reload, restarting")
                await self._run(spec, restart_all=True)
            elif spec != self.spec:
                self.note("reload", f"{self.name}: ENV or SCALING edited, applying")
                await self._run(spec)

    def config(self) -> dict[str, str]:
        text = self._read_overrides()
        return parse_env(text, f"envs/{self.name}/ENV", {}) if text else {}

    def _read_overrides(self) -> str:
        try:
            return self.paths.env_file(self.name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return ""

    async def configure(self, updates: Mapping[str, str], removals: list[str]) -> dict[str, str]:
        """Change the overrides in envs/APP/ENV, then restart what changed, one at a time."""
        async with self.lock:
            current = self.config()
            unknown = [key for key in removals if key not in current]
            if unknown:
                raise EnvError(f"not set: {', '.join(unknown)}", key=unknown[0])
            wanted = {k: v for k, v in current.items() if k not in removals} | dict(updates)
            text = format_env(wanted)
            spec = self.load(overrides=text)        # the whole result, before any write
            write_atomic(self.paths.env_file(self.name), text, 0o600)
            changed = sorted(set(updates) | set(removals))
            self.note("config", f"{self.name}: config changed ({', '.join(changed)})")
            if self.desired == RUNNING and spec.settings.auto_restart:
                await self._run(spec)
            return self.config()

    def live(self) -> dict[str, Any]:
        spec = self.spec or self.load()
        return {"env": live_env(spec, self.paths, self.registry.base_env),
                "cwd": str(self.paths.app(self.name))}

    def logs(self, lines: int, kind: str | None) -> list[dict[str, str]]:
        found = []
        for source, path in log_files(self.paths.log_dir(self.name), kind):
            found += [{"source": source, "line": line} for line in tail(path, lines)]
        found.sort(key=lambda entry: entry["line"].split(" ", 1)[0])     # by timestamp
        return found[-lines:] if lines else []

    async def destroy(self) -> dict[str, list[str]]:
        """Stop and remove everything but data/APP and cache/APP."""
        async with self.lock:
            await self.group.stop()
            self.log.close()
            self.registry.unwatch(self)
            removed = []
            for path in (self.paths.app(self.name), self.paths.repo(self.name),
                         self.paths.env_dir(self.name), self.paths.log_dir(self.name),
                         *self.paths.nginx().glob(f"{self.name}.*")):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
                else:
                    continue
                removed.append(str(path))
            self.registry.forget(self)
            kept = [str(p) for p in (self.paths.data(self.name), self.paths.cache(self.name))
                    if p.exists()]
            log.info("%s: destroyed", self.name)
            self.registry.events.emit(self.name, None, "destroy", f"{self.name}: destroyed")
            return {"removed": removed, "kept": kept}

    # -- reporting -----------------------------------------------------------

    def _formation(self) -> dict[str, int]:
        if self.spec is not None:
            return dict(self.spec.scaling)
        try:
            return dict(self.load().scaling)
        except PikudError:
            return {}

    def summary(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for proc in self.group.processes.values():
            counts[proc.state.value] = counts.get(proc.state.value, 0) + 1
        return {"name": self.name, "state": self.desired, "formation": self._formation(),
                "processes": counts}

    def detail(self) -> dict[str, Any]:
        return dict(self.summary(),
                    processes=[p.snapshot() for p in self.group.processes.values()])

    def state(self) -> dict[str, Any]:
        return {"desired": self.desired, "ports": self.ports}


class AppRegistry:
    """Every app the daemon knows, their persisted desired state, boot and shutdown."""

    def __init__(self, paths: Paths, base_env: Mapping[str, str], app_defaults: AppSettings,
                 events: EventLog, watch: Callable[[App], None] = lambda app: None,
                 unwatch: Callable[[App], None] = lambda app: None) -> None:
        self.paths = paths
        self.base_env = dict(base_env)
        self.app_defaults = app_defaults
        self.events = events
        self.watch, self.unwatch = watch, unwatch
        self.apps: dict[str, App] = {}

    def get(self, name: str) -> App:
        validate_app_name(name)
        if name not in self.apps:
            if not self.paths.app(name).is_dir():
                raise AppNotFound(name)
            self.apps[name] = App(name, self)
        return self.apps[name]

    def names(self) -> list[str]:
        apps_dir = self.paths.root / "apps"
        on_disk = {p.name for p in apps_dir.iterdir() if p.is_dir()} if apps_dir.is_dir() else set()
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
            except PikudError as exc:
                log.warning("state names app %r, which is gone: %s", name, exc)
                continue
            app.ports = {k: int(v) for k, v in state.get("ports", {}).items()}
            app.desired = state.get("desired", STOPPED)
            if app.desired == RUNNING:
                starting.append(self._boot_one(app))
        await asyncio.gather(*starting)

    async def _boot_one(self, app: App) -> None:
        try:
            await app.start()
        except PikudError as exc:
            app.note("error", f"{app.name}: not started at boot: {exc}", logging.ERROR)

    async def shutdown(self) -> None:
        await asyncio.gather(*(app.stop(persist=False) for app in self.apps.values()))

    def process_count(self) -> int:
        return sum(len(app.group.processes) for app in self.apps.values())
