"""App: what the control API acts on, one per app.

An ``App`` turns its parsed files (``AppSpec``) and its current release into
``ProcessSpec``s and has its ``ProcessGroup`` apply them. Every action takes
the app's lock, so two requests for one app never interleave (a second push
waits, and says so) while different apps proceed in parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pikud.appspec import (WEB_KINDS, AppSpec, format_env, format_scaling, load_spec,
                           parse_env, parse_scale_args, supervised_kinds)
from pikud.atomic import write_atomic, written_unless_failed
from pikud.ceilings import admit
from pikud.cron import JobSpec, cron_entries, job_settings
from pikud.deploy.checkout import ref_value, wait_for_ref
from pikud.deploy.pipeline import PushInfo, build_release, release_env, spec_warnings
from pikud.deploy.releases import Release, ReleaseStore
from pikud.deploy.servers import check_installed, server_command, servers_chosen
from pikud.errors import DeployError, EnvError, PikudError
from pikud.procman.group import ProcessGroup, Readiness, drain
from pikud.procman.plan import plan
from pikud.procman.health import wait_ready
from pikud.procman.children import stop_leftovers
from pikud.procman.idle import IdleWatch
from pikud.procman.logs import Follower, LogFile, log_files, tail
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ManagedProcess, ProcessSpec
from pikud.procman.state import ProcessState

if TYPE_CHECKING:
    from pikud.registry import AppRegistry

log = logging.getLogger(__name__)

RUNNING, STOPPED = "running", "stopped"
SERVED_KINDS = ("wsgi", "asgi")      # entries that name a Python object, served by an app server
DRAIN = 1.0         # seconds slots keep serving requests in flight once traffic has left them
Progress = Callable[[str], None]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def remove_tree(path: Path) -> None:
    """rmtree off the event loop: a large release must not stall every app's traffic."""
    await asyncio.to_thread(shutil.rmtree, path, True)


def quiet(line: str) -> None:
    """A progress sink for actions nobody watches."""


class App:
    def __init__(self, name: str, registry: AppRegistry) -> None:
        self.name = name
        self.registry = registry
        self.paths = registry.paths
        self.lock = asyncio.Lock()
        self.desired = STOPPED
        self.ports: dict[str, int] = {}
        self.spec: AppSpec | None = None
        self.releases = ReleaseStore(self.paths, name)
        self._accepted: tuple[str, str] | None = None     # (ref, revision) of the last push
        self.followers: set[Follower] = set()
        self.group = ProcessGroup(self._on_event, self.followers)
        self.idle: IdleWatch | None = None          # PIKU_IDLE_TIMEOUT (scale to zero)
        self._noted: dict[str, tuple[str, ...]] = {}  # warnings by topic, as last noted
        self.claimed = 0        # processes it runs or is starting, against max_processes
        defaults = registry.app_defaults
        self.log = LogFile(self.paths.log_dir(name) / "pikud.log", "pikud",
                           defaults.log_max_bytes, defaults.log_backups, self.followers)

    # -- building the desired state --------------------------------------------

    def _on_event(self, process: str | None, event: str, message: str) -> None:
        self.registry.events.emit(self.name, process, event, message)
        self.log.write_line(message)
        if event == "waking":       # one connection wakes every web slot of the app
            for slot in self.web_slots():
                slot.resume()
        if (self.idle is not None and event in ("waking", ProcessState.STARTING.value)
                and any(slot.name == process for slot in self.web_slots())):
            self.idle.wake()        # a worker or cron run says nothing about web traffic

    def web_slots(self) -> list[ManagedProcess]:
        """The web slots serving traffic now, with their daemon-owned sockets."""
        return [proc for proc in self.group.processes.values()
                if proc.spec.listen_port is not None]

    async def _sleep(self) -> bool:
        """Suspend the web slots (IdleWatch); declined while another action holds the lock."""
        if self.lock.locked():
            return False
        async with self.lock:
            for slot in self.web_slots():
                slot.suspend()
        return True

    def _watch_idle(self, timeout: float) -> None:
        """Start, change or end the idle watch for PIKU_IDLE_TIMEOUT (0: off)."""
        if self.idle is not None and self.idle.timeout != timeout:
            self.idle.close()
            self.idle = None
        if timeout and self.idle is None:
            self.idle = IdleWatch(self.name, timeout, self.web_slots, self._sleep)
        elif self.idle is not None:
            self.idle.wake()                # the slots may be a new generation

    def note(self, event: str, message: str, level: int = logging.INFO,
             process: str | None = None) -> None:
        """An app-level event: logged, in the app's pikud.log and in /events."""
        log.log(level, "%s", message)
        self._on_event(process, event, message)

    @property
    def release(self) -> Release | None:
        return self.releases.get() if self.releases.current is not None else None

    def source(self, release: Release | None) -> Path:
        """The directory the processes run in: the release's, or apps/APP as it is."""
        if release is not None:
            return self.releases.directory(release.number)
        return self.paths.app(self.name).resolve()

    def load(self, release: Release | None = None, **candidate: str) -> AppSpec:
        """Parse the app's files (or a candidate ``overrides``/``scaling_text``), or raise."""
        release = release or self.release
        spec = load_spec(self.paths, self.name, self.registry.base_env,
                         self.registry.app_defaults, source=self.source(release), **candidate)
        entries, on_demand = spec.procfile.entries, bool(spec.settings.idle_timeout)
        if release is not None and release.env_path:
            check_installed(entries, spec.env, on_demand, Path(release.env_path) / "bin")
        else:
            servers_chosen(entries, spec.env, on_demand)
        return spec

    def admit(self, spec: AppSpec) -> int:
        """How many processes ``spec`` runs; TooManyProcesses when over a pikud.toml ceiling."""
        return admit(spec, self.registry.ceilings, self.registry.claimed(self.name))

    @contextlib.contextmanager
    def _claim(self, spec: AppSpec) -> Iterator[None]:
        """Count ``spec``'s processes as this app's while it is applied; back if that fails.

        Admitted and claimed in one step, with no await between: two apps
        starting at once (boot) cannot both take the last places.
        """
        before, self.claimed = self.claimed, self.admit(spec)
        try:
            yield
        except BaseException:
            self.claimed = before
            raise

    def process_specs(self, spec: AppSpec, release: Release | None,
                      ports: dict[str, int]) -> dict[str, ProcessSpec]:
        """The ProcessSpec of every slot (``app:kind.N``); web slots take ports from ``ports``."""
        source = self.source(release)
        env = release_env(spec, self.paths, self.registry.base_env, source, release)
        s = spec.settings
        policy = RestartPolicy(s.start_secs, s.backoff_base, s.backoff_max,
                               s.start_retries, s.fatal_cooloff)
        specs: dict[str, ProcessSpec] = {}
        for kind in supervised_kinds(spec.procfile):
            command = spec.procfile.entries[kind]
            inherits, backlog = kind == "web" and s.listen_fds, 128
            if kind in SERVED_KINDS:
                server = server_command(kind, command, spec.env, bool(s.idle_timeout))
                command, inherits, backlog = server.command, server.inherits, server.backlog
            for index in range(1, spec.scaling[kind] + 1):
                name = f"{self.name}:{kind}.{index}"
                process_env = dict(env, PROC_TYPE=kind, PIKU_ROOT=str(self.paths.root))
                if kind in WEB_KINDS:
                    if "PORT" not in spec.env and name not in ports:
                        ports[name] = free_port()
                    process_env["PORT"] = spec.env.get("PORT") or str(ports[name])
                specs[name] = ProcessSpec(
                    name=name, kind=kind, index=index, command=command,
                    env=tuple(sorted(process_env.items())), cwd=source,
                    log_path=self.paths.log_dir(self.name) / f"{kind}.{index}.log",
                    stop_timeout=s.stop_timeout, policy=policy,
                    log_max_bytes=s.log_max_bytes, log_backups=s.log_backups,
                    port=int(process_env["PORT"]) if kind in WEB_KINDS else None,
                    inherits=inherits, listen_backlog=backlog)
        return specs

    def cron_jobs(self, spec: AppSpec, release: Release | None) -> list[JobSpec]:
        """The app's cron entries as jobs; raises CronError on a bad schedule or TZ."""
        tz, overlap, timeout = job_settings(spec.env)
        entries = cron_entries(spec.procfile, tz=tz)
        source = self.source(release)
        env = release_env(spec, self.paths, self.registry.base_env, source, release)
        env["PIKU_ROOT"] = str(self.paths.root)
        s = spec.settings
        return [JobSpec(app=self.name, kind=kind, entry=entry, env=tuple(sorted(env.items())),
                        cwd=source, log_path=self.paths.log_dir(self.name) / f"{kind}.log",
                        tz=tz, overlap=overlap, timeout=timeout, stop_timeout=s.stop_timeout,
                        log_max_bytes=s.log_max_bytes, log_backups=s.log_backups)
                for kind, entry in entries.items()]

    def _prepare(self, spec: AppSpec, release: Release | None) -> None:
        self._warn_once("spec", spec_warnings(spec))
        for path in (self.paths.log_dir(self.name), self.paths.data(self.name),
                     self.paths.cache(self.name)):
            path.mkdir(parents=True, exist_ok=True)
        self.paths.env_dir(self.name).mkdir(mode=0o700, parents=True, exist_ok=True)
        env = release_env(spec, self.paths, self.registry.base_env, self.source(release), release)
        live = self.paths.live_env_file(self.name)
        try:
            write_atomic(live, format_env(env), 0o600)
        except OSError as exc:      # a full disk: the processes get their env all the same
            with contextlib.suppress(OSError):
                live.unlink(missing_ok=True)        # gone rather than stale
            self.note("warning", f"{self.name}: {live} not written: {exc}", logging.WARNING)
        self.spec = spec
        self.registry.watch(self)
        self._watch_idle(spec.settings.idle_timeout)

    async def _run(self, spec: AppSpec, *, restart_all: bool = False,
                   starting: bool = False) -> None:
        """Apply ``spec`` to the current release.

        Worker slots are replaced one at a time (rolling). When web processes
        would be replaced, the whole generation is switched instead, so no
        request is lost. ``starting`` (boot, start, restart) runs the @reboot
        cron entries once.
        """
        with self._claim(spec):
            await self._apply(spec, restart_all=restart_all, starting=starting)

    async def _apply(self, spec: AppSpec, *, restart_all: bool, starting: bool) -> None:
        source = self.source(self.release)
        jobs = self.cron_jobs(spec, self.release)
        self.registry.traffic.check(self.name, spec, source)
        desired = self.process_specs(spec, self.release, self.ports)
        changed = plan(self.group.specs, desired).replace
        if restart_all:
            changed = tuple(n for n in desired if n in self.group.processes)
        if any(desired[n].kind in WEB_KINDS for n in changed) and "PORT" not in spec.env:
            await self._switch(spec, self.release, quiet, starting=starting)
            return
        previous, was = self.spec, self.desired
        self._prepare(spec, self.release)
        self.desired = RUNNING
        self.registry.save()
        self.registry.scheduler.set_jobs(self.name, jobs, starting=starting)
        staying = {n: s for n, s in self.group.specs.items() if n in desired}
        leaving = [proc for name, proc in self.group.processes.items()
                   if name not in desired and proc.spec.kind in WEB_KINDS]
        try:
            await self.publish(spec, source, staying)       # scale down: first
            await drain(leaving, DRAIN)
            await self.group.replace({n: desired[n] for n in changed})
            # Added web copies get traffic only once ready, unless nothing serves yet.
            await self.group.apply(desired, ready=None if starting else self._ready_check(spec))
            self.group.retry()
        except PikudError:
            if was != RUNNING:      # a start: what ran before it is nothing
                await self._stop_all()
                self.desired = was
                self.registry.save()
            await self._undo(None if starting else previous, source)
            raise
        await self.publish(spec, source, self.group.specs)

    async def _undo(self, previous: AppSpec | None, source: Path) -> None:
        """After a failed change: put back what ran (spec, cron jobs, slots) and its traffic.

        A failure here is logged, not raised over the one that caused it.
        """
        try:
            if previous is not None:
                self._prepare(previous, self.release)
                self.registry.scheduler.set_jobs(
                    self.name, self.cron_jobs(previous, self.release), starting=False)
                await self.group.apply(self.process_specs(previous, self.release, self.ports))
            assert self.spec is not None                 # _run prepared one
            await self.publish(self.spec, source, self.group.specs)
        except PikudError as exc:
            self.note("error", f"{self.name}: could not put back what ran before the change: "
                      f"{exc}", logging.ERROR)

    async def _switch(self, spec: AppSpec, release: Release | None, progress: Progress, *,
                      starting: bool | None = None) -> None:
        """Start a new generation beside the running one, move traffic, stop the old one.

        ``release`` becomes the current release (a deploy or rollback), or is
        the current one again (a restart or config change of web processes).
        """
        with self._claim(spec):
            await self._start_generation(spec, release, progress, starting)

    async def _start_generation(self, spec: AppSpec, release: Release | None,
                                progress: Progress, starting: bool | None) -> None:
        source = self.source(release)
        jobs = self.cron_jobs(spec, release)
        self.registry.traffic.check(self.name, spec, source)
        ports: dict[str, int] = {}
        desired = self.process_specs(spec, release, ports)
        fixed_port = "PORT" in spec.env
        exclusive = [n for n, s in desired.items() if s.kind in WEB_KINDS and fixed_port]
        label = f"release {release.number}" if release else "the app"
        progress(f"-----> Starting {len(desired)} processes of {label}")
        if starting is None:
            starting = self.desired != RUNNING

        async def route(ready: Mapping[str, ProcessSpec]) -> None:
            await self.publish(spec, source, ready, progress)

        has_web = any(s.kind in WEB_KINDS for s in desired.values())
        built = release is not None and all(r.number != release.number
                                            for r in self.releases.releases)
        try:
            await self.group.switch(desired, exclusive, ready=self._ready_check(spec),
                                    route=route, grace=DRAIN if has_web else 0.0)
        except BaseException:
            if built:           # a new release that never went live: nothing refers to it
                assert release is not None
                await remove_tree(self.releases.directory(release.number))
            raise
        self.ports = ports
        if release is not None and release.number != self.releases.current:
            self.releases.activate(release)
        self._prepare(spec, release)
        self.desired = RUNNING
        self.registry.save()
        self.registry.scheduler.set_jobs(self.name, jobs, starting=starting)

    async def publish(self, spec: AppSpec, source: Path, processes: Mapping[str, ProcessSpec],
                      progress: Progress = quiet) -> None:
        """Route the app's traffic to ``processes``; say what nginx's workers cannot reach.

        The advice goes to the push's output each time, and to the app's log
        when it changed (Debian 12's 0700 home folders: every request a 502).
        """
        advice = await self.registry.traffic.publish(self.name, spec, source, processes)
        if advice is None:                  # no site was put live
            return
        for problem in advice:
            progress(f"-----> Warning: {problem}")
        self._warn_once("nginx", tuple(advice))

    def _warn_once(self, topic: str, warnings: tuple[str, ...]) -> None:
        """Note ``warnings`` in the app's log when they differ from the topic's last ones:
        once, not at every restart or scale."""
        if warnings != self._noted.get(topic, ()):
            for warning in warnings:
                self.note("warning", f"{self.name}: {warning}", logging.WARNING)
            self._noted[topic] = warnings

    def _ready_check(self, spec: AppSpec) -> Readiness:
        """A new web process is ready when its port answers (and PIKU_HEALTHCHECK, if set)."""
        settings = spec.settings

        async def ready(process: ProcessSpec) -> str:
            if process.port is None:
                return ""
            # A daemon-owned socket accepts before the server runs: ask it over HTTP.
            path = settings.healthcheck or ("/" if process.listen_port else None)
            return await wait_ready(process.port, path, settings.ready_timeout)
        return ready

    # -- actions (each under the app lock) ---------------------------------------

    async def _locked(self, progress: Progress) -> None:
        if self.lock.locked():
            progress(f"-----> Waiting for another action on {self.name} to finish")
        await self.lock.acquire()

    async def deploy(self, push: PushInfo | None = None, progress: Progress = quiet) -> None:
        """Build and switch to a new release (a push, or a rebuild of the current one).

        An app without releases (code placed in apps/APP) is re-read and applied.
        """
        await self._locked(progress)
        try:
            self.note("deploy", f"{self.name}: deploying" + (
                f" {push.revision[:12]} pushed by {push.pusher or 'unknown'}" if push else ""))
            if push is None and self.release is None:
                await self._run(self.load(), starting=self.desired != RUNNING)
                return
            if push is not None:
                await self._check_ref(push)
            release, spec = await build_release(
                self.paths, self.releases, push, self.release, self.registry.base_env,
                self.registry.app_defaults, self.config(), progress, self.admit)
            await self._switch(spec, release, progress)
            if push is not None:
                self._accepted = (push.ref, push.revision)
            await self._prune(spec.settings.keep_releases, progress)
            self.note("deploy", f"{self.name}: release {release.number} is live")
        finally:
            self.lock.release()

    async def _check_ref(self, push: PushInfo) -> None:
        """Refuse a push that waited while another one moved its branch.

        git moves the ref only after the hook that deployed returns, so the
        last accepted push of this branch is waited for (briefly) first.
        """
        repo = self.paths.repo(self.name)
        if self._accepted is not None and self._accepted[0] == push.ref:
            await wait_for_ref(repo, *self._accepted, timeout=10.0)
        current = await ref_value(repo, push.ref)
        expected = push.old if push.old.strip("0") else ""      # zeros: a new branch
        if expected != current:
            raise DeployError(f"{push.ref} moved to {current[:12] or 'nothing'} while this "
                              "push waited: fetch, merge and push again")

    async def rollback(self, number: int | None, progress: Progress = quiet) -> Release:
        """Switch back to release ``number`` (default: the one before the current) unbuilt."""
        await self._locked(progress)
        try:
            target = self.releases.get(number) if number is not None else self.releases.previous()
            spec = self.load(target)
            progress(f"-----> Rolling {self.name} back to release {target.number}")
            await self._switch(spec, target, progress)
            self.note("rollback", f"{self.name}: rolled back to release {target.number}")
            return target
        finally:
            self.lock.release()

    async def _prune(self, keep: int, progress: Progress) -> None:
        """Drop all but the newest ``keep`` releases, the folders no release record names
        (a push killed half-way) and the environments none of them uses."""
        removed = self.releases.prune(keep)
        for path in [*map(self.releases.directory, removed), *self.releases.unrecorded()]:
            await remove_tree(path)
        in_use = self.releases.env_paths_in_use()
        env_dir = self.paths.env_dir(self.name)
        for path in env_dir.iterdir() if env_dir.is_dir() else ():
            if (path / ".pikud-complete").exists() and str(path) not in in_use:
                await remove_tree(path)
        if removed:
            progress(f"-----> Pruned releases {', '.join(map(str, removed))}")

    async def start(self, *, boot: bool = False) -> None:
        """Run the app; @reboot cron entries run when it was not running (or at boot).

        At boot only while it is still wanted: a `piku stop` may have come first.
        """
        async with self.lock:
            if boot and self.desired != RUNNING:
                return
            await self._run(self.load(), starting=boot or self.desired != RUNNING)

    async def restart(self) -> None:
        """Replace every process: web ones as a new generation, workers one at a time."""
        async with self.lock:
            spec = self.load()
            self.note("restart", f"{self.name}: restarting")
            await self._run(spec, restart_all=True, starting=True)

    async def stop(self, *, persist: bool = True) -> None:
        """Stop every process; ``persist=False`` (daemon shutdown) keeps the desired state.

        Stopped first, then saved: a save that fails (a full disk) never leaves
        the app called stopped while it runs.
        """
        async with self.lock:
            if self.spec is not None:       # the router answers 503; nginx keeps its config
                await self.publish(self.spec, self.source(self.release), {})
            self._watch_idle(0)
            await self._stop_all(untracked=persist)
            if persist:
                self.desired = STOPPED
                self.registry.save()

    async def _stop_all(self, *, untracked: bool = True) -> None:
        """Stop every process of the app: its slots, its cron runs and (``untracked``) any
        it does not track, found in /proc: left by a start that failed, or escaped from
        its slot. A daemon shutdown skips that scan; the next boot's covers every app."""
        await asyncio.gather(self.group.stop(), self.registry.scheduler.remove_app(self.name))
        self.claimed = 0
        if not untracked:
            return
        timeout = (self.spec.settings if self.spec else self.registry.app_defaults).stop_timeout
        found = await stop_leftovers(str(self.paths.root), timeout, app=self.name)
        if found:
            self.note("stop", f"{self.name}: stopped {found} processes it did not track",
                      logging.WARNING)

    async def scale(self, args: Mapping[str, Any]) -> None:
        """Change kind counts; only the difference is started or stopped."""
        async with self.lock:
            spec = self.load()
            kinds = supervised_kinds(spec.procfile)
            changes = parse_scale_args([f"{k}={v}" for k, v in args.items()], kinds)
            text = format_scaling(dict(spec.scaling, **changes))
            spec = self.load(scaling_text=text)
            self.admit(spec)
            with self._kept_if_applied(self.paths.scaling_file(self.name), text, 0o600):
                self.note("scale", f"{self.name}: scaled to "
                          + ", ".join(f"{k}={v}" for k, v in spec.scaling.items()))
                if self.desired == RUNNING:
                    await self._run(spec)

    @contextlib.contextmanager
    def _kept_if_applied(self, path: Path, text: str, mode: int) -> Iterator[None]:
        """Write a settings file for the block to apply; undo it, and say so, if that fails."""
        with written_unless_failed(path, text, mode):
            try:
                yield
            except PikudError as exc:
                self.note("error", f"{self.name}: the change was undone, {path.name} is as it "
                          f"was: {exc}", logging.WARNING)
                raise

    async def reload_files(self, why: str) -> None:
        """A watched file changed: apply a valid edit, report and ignore a bad one."""
        async with self.lock:
            if self.desired != RUNNING:
                return
            try:
                spec = self.load()
                self.admit(spec)
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
        try:
            text = self.paths.env_file(self.name).read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return parse_env(text, f"envs/{self.name}/ENV", {})

    async def configure(self, updates: Mapping[str, str], removals: list[str]) -> dict[str, str]:
        """Change the overrides in envs/APP/ENV, then restart what changed (as restart does)."""
        async with self.lock:
            current = self.config()
            unknown = [key for key in removals if key not in current]
            if unknown:
                raise EnvError(f"not set: {', '.join(unknown)}", key=unknown[0])
            wanted = {k: v for k, v in current.items() if k not in removals} | dict(updates)
            text = format_env(wanted)
            spec = self.load(overrides=text)        # the whole result, before any write
            self.admit(spec)
            self.registry.traffic.check(self.name, spec, self.source(self.release))
            self.cron_jobs(spec, self.release)      # TZ, PIKU_CRON_*: even with no restart now
            changed = sorted(set(updates) | set(removals))
            with self._kept_if_applied(self.paths.env_file(self.name), text, 0o600):
                self.note("config", f"{self.name}: config changed ({', '.join(changed)})")
                if self.desired == RUNNING and spec.settings.auto_restart:
                    await self._run(spec)
            return self.config()

    def live(self) -> dict[str, Any]:
        spec = self.spec or self.load()
        source = self.source(self.release)
        return {"env": release_env(spec, self.paths, self.registry.base_env, source,
                                   self.release), "cwd": str(source)}

    def logs(self, lines: int, kind: str | None) -> list[dict[str, str]]:
        found = []
        for source, path in log_files(self.paths.log_dir(self.name), kind):
            found += [{"source": source, "line": line} for line in tail(path, lines)]
        found.sort(key=lambda entry: entry["line"].split(" ", 1)[0])     # by timestamp
        return found[-lines:] if lines else []

    async def destroy(self) -> dict[str, list[str]]:
        """Stop and remove everything but data/APP and cache/APP."""
        async with self.lock:
            await self._stop_all()
            self.registry.scheduler.set_jobs(self.name, [], starting=False)    # forget its history
            await self.registry.traffic.withdraw(self.name)
            self._watch_idle(0)
            self.log.close()
            self.registry.unwatch(self)
            nginx = self.paths.nginx()
            removed = []
            for path in (self.releases.root, self.releases.file, self.paths.app(self.name),
                         self.paths.repo(self.name), self.paths.env_dir(self.name),
                         self.paths.log_dir(self.name),
                         *(nginx / f"{self.name}.{suffix}" for suffix in ("conf", "crt", "key")),
                         *nginx.glob(f"{self.name}.include-*")):
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir():
                    await remove_tree(path)
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
        release = self.release
        return {"name": self.name, "state": self.desired, "formation": self._formation(),
                "processes": counts, "release": release.number if release else None,
                "problems": [self.releases.problem] if self.releases.problem else []}

    def detail(self) -> dict[str, Any]:
        """The summary, its processes, and its problems with the daemon-wide ones."""
        summary = self.summary()
        return dict(summary, processes=[p.snapshot() for p in self.group.all()],
                    problems=self.registry.problems() + summary["problems"])

    def cron(self) -> list[dict[str, Any]]:
        return self.registry.scheduler.describe(self.name)

    async def cron_run(self, kind: str) -> dict[str, Any]:
        return await self.registry.scheduler.run_now(self.name, kind)

    def releases_list(self) -> list[dict[str, Any]]:
        return [r.summary(self.releases.current) for r in reversed(self.releases.releases)]

    def state(self) -> dict[str, Any]:
        return {"desired": self.desired, "ports": self.ports}
