"""AppCore: an app's state and the one path every change takes (see App for the actions).

A change (deploy, rollback, start, restart, config:set, ps:scale, a reload
of hand-edited files) is ``_change(spec, files, ...)``: it builds what the
app should run (formation.py), has the ProcessGroup apply it, and commits
in one place, ``_commit``, only once the processes are up. Nothing is
saved, scheduled or written before, so a failure has only processes and
routes to put back (``_put_back``), never state.
"""

# Design notes:
# - Two ways to apply, one decision: a new release, or web processes that
#   would be replaced while the daemon picks their addresses, start a whole new
#   generation beside the running one (``_switch``): traffic moves once it is
#   ready, so no request is lost, and the action returns then: the old
#   generation drains in the background. Anything else is reconciled in place
#   (``_reconcile``): workers replaced one at a time, slots added or removed.
# - After an in-place change, traffic is routed to the processes that now
#   run once the change is committed: as before the restructure, a failure
#   of that last publish is raised but leaves the processes as they now are.
# - ``files`` are the ENV and SCALING texts a spec was read from. The last
#   applied ones (and those of a change under way) let the daemon's file
#   watcher tell pikud's own writes from hand edits (``own_write``).

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pikud import identity
from pikud.app.desired import Desired
from pikud.app.formation import Allocate, cron_jobs, process_specs, unix_kinds
from pikud.app.services import AppServices
from pikud.appspec import WEB_KINDS, AppSpec, format_env, load_spec
from pikud.appusers import provision
from pikud.atomic import write_atomic
from pikud.ceilings import admit
from pikud.deploy.releases import Release, ReleaseStore
from pikud.deploy.servers import check_installed, servers_chosen
from pikud.deploy.spec import release_env, spec_warnings
from pikud.errors import Forbidden, PikudError
from pikud.procman.children import stop_leftovers
from pikud.procman.group import ProcessGroup, Readiness
from pikud.procman.health import wait_ready
from pikud.procman.idle import IdleWatch
from pikud.procman.logs import Follower, LogFile
from pikud.procman.plan import plan
from pikud.procman.process import ManagedProcess, ProcessSpec
from pikud.procman.sockets import FOLDER_MODE, Address, socket_path
from pikud.procman.state import ProcessState

if TYPE_CHECKING:
    from pikud.cron.jobs import JobSpec

log = logging.getLogger(__name__)

DRAIN = 1.0         # seconds slots keep serving requests in flight once traffic has left them
Progress = Callable[[str], None]
Files = tuple[str | None, str | None]       # envs/APP/ENV and SCALING as read (None: absent)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def allocator(folder: Path) -> Allocate:
    """Where a new web slot serves: a new unix socket path in ``folder``, or a free port."""
    return lambda slot, unix: socket_path(folder, slot) if unix else free_port()


async def remove_tree(path: Path) -> None:
    """rmtree off the event loop: a large release must not stall every app's traffic."""
    import shutil  # imported on first use (it brings bz2 and lzma): see README
    await asyncio.to_thread(shutil.rmtree, path, True)


def quiet(line: str) -> None:
    """A progress sink for actions nobody watches."""


def _text(path: Path) -> str | None:
    """A settings file's text as load_spec reads it; None when absent or unreadable
    (load_spec then reads it itself and names the problem)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return None


class AppCore:
    def __init__(self, name: str, services: AppServices) -> None:
        self.name = name
        self.services = services
        self.paths = services.paths
        self.lock = asyncio.Lock()
        self.desired = Desired.STOPPED
        self.addresses: dict[str, Address] = {}     # web slot -> port or socket path
        self.spec: AppSpec | None = None            # the spec last applied
        self.releases = ReleaseStore(self.paths, name)
        self.followers: set[Follower] = set()
        self.group = ProcessGroup(self._on_event, self.followers, services.keeper)
        self.idle: IdleWatch | None = None          # PIKU_IDLE_TIMEOUT (scale to zero)
        self._noted: dict[str, tuple[str, ...]] = {}  # warnings by topic, as last noted
        self._applied: Files | None = None          # the files self.spec was read from
        self._applying: Files | None = None         # those of the change under way
        self._deferred: Files | None = None         # written with no restart (PIKU_AUTO_RESTART)
        self.claimed = 0        # processes it runs or is starting, against max_processes
        self.on_ports = False   # its wsgi/asgi serve on ports: nginx cannot reach the sockets
        defaults = services.defaults
        self.log = LogFile(self.paths.log_dir(name) / "pikud.log", "pikud",
                           defaults.log_max_bytes, defaults.log_backups, self.followers)

    # -- events and the idle watch ---------------------------------------------

    def _on_event(self, process: str | None, event: str, message: str) -> None:
        self.services.events.emit(self.name, process, event, message)
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
                if proc.spec.listen_address is not None]

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

    def _warn_once(self, topic: str, warnings: tuple[str, ...]) -> None:
        """Note ``warnings`` in the app's log when they differ from the topic's last ones:
        once, not at every restart or scale."""
        if warnings != self._noted.get(topic, ()):
            for warning in warnings:
                self.note("warning", f"{self.name}: {warning}", logging.WARNING)
            self._noted[topic] = warnings

    # -- reading what the app should run -----------------------------------------

    @property
    def applied(self) -> Files | None:
        """The ENV and SCALING texts the running spec was read from (None: never applied)."""
        return self._applied

    @property
    def deferred(self) -> Files | None:
        """The ENV and SCALING texts config:set wrote for the next restart (auto_restart off)."""
        return self._deferred

    @property
    def running(self) -> bool:
        return self.desired is Desired.RUNNING

    @property
    def release(self) -> Release | None:
        return self.releases.get() if self.releases.current is not None else None

    def source(self, release: Release | None) -> Path:
        """The directory the processes run in: the release's, or apps/APP as it is."""
        if release is not None:
            return self.releases.directory(release.number)
        return self.paths.app(self.name).resolve()

    def _files(self) -> Files:
        return (_text(self.paths.env_file(self.name)), _text(self.paths.scaling_file(self.name)))

    def own_write(self) -> str | None:
        """Why ENV and SCALING hold what pikud itself wrote, if they do: what the app
        last applied, or what a change under way applies. A watcher event is then no edit."""
        files = self._files()
        if self._applying is not None:      # the old texts back meanwhile: a hand edit
            return "as the change under way applies them" if files == self._applying else None
        if files == self._applied:
            return "as last applied"
        if files == self._deferred:
            return "as config:set wrote them, for the next restart"
        return None

    def load(self, release: Release | None = None, *, overrides: str | None = None,
             scaling_text: str | None = None) -> tuple[AppSpec, Files]:
        """Parse the app's files (or a candidate ENV or SCALING text), or raise;
        with the ENV and SCALING texts it was read from."""
        release = release or self.release
        on_disk = self._files()
        files = (on_disk[0] if overrides is None else overrides,
                 on_disk[1] if scaling_text is None else scaling_text)
        spec = load_spec(self.paths, self.name, self.services.base_env, self.services.defaults,
                         source=self.source(release), overrides=files[0],
                         scaling_text=files[1])
        entries, on_demand = spec.procfile.entries, bool(spec.settings.idle_timeout)
        if release is not None and release.env_path:
            check_installed(entries, spec.env, on_demand, Path(release.env_path) / "bin")
        else:
            servers_chosen(entries, spec.env, on_demand)
        return spec, files

    def admit(self, spec: AppSpec) -> int:
        """How many processes ``spec`` runs; TooManyProcesses when over a pikud.toml ceiling."""
        return admit(spec, self.services.ceilings, self.services.claimed(self.name))

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

    def _vet_include(self, spec: AppSpec, source: Path, admin: bool) -> None:
        """Refuse NGINX_INCLUDE_FILE text a restart would not put live (the current release
        with the current ENV) unless the caller has admin on the app: nginx's master reads
        it as root, so it could write any file, or echo another app's ENV through
        ``nginx -t``. Forbidden, before anything changed."""
        if admin:
            return
        include = self.services.traffic.include(self.name, spec, source)
        if include is None:
            return
        try:
            accepted = self.services.traffic.include(self.name, self.load()[0],
                                                     self.source(self.release))
        except PikudError:
            accepted = None         # what is there does not load: nothing accepted to keep
        if accepted is None or accepted.text != include.text:
            raise Forbidden(f"NGINX_INCLUDE_FILE ({spec.env['NGINX_INCLUDE_FILE'].strip()}) "
                            f"would put new nginx config live, which nginx's master reads as "
                            f"root: that needs the admin role on app {self.name!r}; nothing "
                            "was changed")

    def _env(self, spec: AppSpec, release: Release | None) -> dict[str, str]:
        return release_env(spec, self.paths, self.services.base_env, self.source(release),
                           release)

    def _socket_folder(self) -> Path:
        return identity.current().socket_folder(self.paths, self.name)

    def _kept(self, addresses: Mapping[str, Address]) -> dict[str, Address]:
        """The addresses slots may keep: ports, and sockets in the app's own folder. Not a
        path elsewhere: one from before app users (another folder), or one written into
        state.json (the deploy user's file), which pikud as root would unlink and bind."""
        folder = self._socket_folder()
        return {name: address for name, address in addresses.items()
                if not isinstance(address, str) or (Path(address).parent == folder
                                                    and address.endswith(".sock"))}

    def _process_specs(self, spec: AppSpec, release: Release | None,
                       addresses: Mapping[str, Address],
                       ) -> tuple[dict[str, ProcessSpec], dict[str, Address]]:
        return process_specs(self.name, spec, self._env(spec, release), self.source(release),
                             self.paths, self._kept(addresses),
                             allocator(self._socket_folder()), unix=not self.on_ports)

    def _cron_jobs(self, spec: AppSpec, release: Release | None) -> list[JobSpec]:
        return cron_jobs(self.name, spec, self._env(spec, release), self.source(release),
                         self.paths)

    # -- the one apply path --------------------------------------------------------

    async def _change(self, spec: AppSpec, files: Files, *, to: Release | None = None,
                      progress: Progress = quiet, restart_all: bool = False,
                      starting: bool | None = None) -> None:
        """Apply ``spec`` to the current release, or switch to release ``to``; commit.

        ``starting`` (boot, start, restart; by default: the app was not
        running) runs the @reboot cron entries once.
        """
        release = to or self.release
        if starting is None:
            starting = not self.running
        self._applying = files
        try:
            await provision(identity.current(), self.paths, self.name)   # app users: piku-APP
            self._make_dirs()
            blocked = (await self.services.traffic.sockets_blocked(self.name)
                       if unix_kinds(spec) else None)
            with self._claim(spec):
                source = self.source(release)
                env = self._env(spec, release)
                jobs = cron_jobs(self.name, spec, env, source, self.paths)
                self.services.traffic.check(self.name, spec, source)
                allocate = allocator(self._socket_folder())
                desired, addresses = process_specs(self.name, spec, env, source, self.paths,
                                                   self._kept(self.addresses), allocate,
                                                   blocked is None)
                changed = plan(self.group.specs, desired).replace
                if restart_all:
                    changed = tuple(n for n in desired if n in self.group.processes)
                in_place = to is None and ("PORT" in spec.env or not any(
                    desired[n].kind in WEB_KINDS for n in changed))
                if in_place:
                    await self._reconcile(spec, source, desired, changed, starting)
                else:
                    desired, addresses = process_specs(self.name, spec, env, source,
                                                       self.paths, {}, allocate, blocked is None)
                    await self._switch(spec, release, source, desired, progress)
                self.on_ports = blocked is not None
                self._commit(spec, files, release, env, addresses, jobs, starting)
        finally:
            self._applying = None
        if in_place:
            await self.publish(spec, source, self.group.specs)

    async def _reconcile(self, spec: AppSpec, source: Path, desired: dict[str, ProcessSpec],
                         changed: tuple[str, ...], starting: bool) -> None:
        """Worker slots replaced one at a time, slots added and removed; web traffic first
        leaves the slots that go, which drain and stop after the change has returned (the
        ``retired:`` line in the app's log)."""
        staying = {n: s for n, s in self.group.specs.items() if n in desired}
        leaving = {name: proc.spec for name, proc in self.group.processes.items()
                   if name not in desired and proc.spec.kind in WEB_KINDS}
        try:
            await self.publish(spec, source, staying)       # scale down: first
            await self.group.replace({n: desired[n] for n in changed})
            # Added web copies get traffic only once ready, unless nothing serves yet.
            # The leaving ones stay until the change holds (a failure puts them back).
            await self.group.apply(desired | leaving,
                                   ready=None if starting else self._ready_check(spec))
            self.group.retire(leaving, DRAIN)
            self.group.retry()
        except PikudError:
            await self._put_back(spec, source, starting)
            raise

    async def _put_back(self, spec: AppSpec, source: Path, starting: bool) -> None:
        """After a failed in-place change: what ran before runs again, with its traffic.

        Nothing else changed (the commit comes after), so there is no state
        to restore. A failure here is logged, not raised over the one that
        caused it.
        """
        try:
            if not self.running:            # a start: what ran before it is nothing
                await self._stop_all()
            previous = None if starting else self.spec
            if previous is not None:
                await self.group.apply(self._process_specs(previous, self.release,
                                                           self.addresses)[0])
            await self.publish(previous or spec, source, self.group.specs)
        except PikudError as exc:
            self.note("error", f"{self.name}: could not put back what ran before the change: "
                      f"{exc}", logging.ERROR)

    async def _switch(self, spec: AppSpec, release: Release | None, source: Path,
                      desired: dict[str, ProcessSpec], progress: Progress) -> None:
        """Start a new generation beside the running one and move traffic to it once it is
        ready; the old one drains and stops after this returns (ProcessGroup.switch), and
        how that went goes to the app's log (``retired:``).

        ``release`` becomes the current release (a deploy or rollback), or is
        the current one again (a restart or config change of web processes).
        A new release that never went live is removed.
        """
        fixed_port = "PORT" in spec.env
        exclusive = [n for n, s in desired.items() if s.kind in WEB_KINDS and fixed_port]
        label = f"release {release.number}" if release else "the app"
        progress(f"-----> Starting {len(desired)} processes of {label}")

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

    def _commit(self, spec: AppSpec, files: Files, release: Release | None,
                env: dict[str, str], addresses: dict[str, Address], jobs: list[JobSpec],
                starting: bool) -> None:
        """The change succeeded: make it the app's state, its cron jobs and its files."""
        self.addresses = addresses
        if release is not None and release.number != self.releases.current:
            self.releases.activate(release)
        self._warn_once("spec", spec_warnings(spec))
        self._make_dirs()
        live = self.paths.live_env_file(self.name)
        try:
            write_atomic(live, format_env(env), 0o600, identity.current().deploy_owner())
        except OSError as exc:      # a full disk: the processes get their env all the same
            with contextlib.suppress(OSError):
                live.unlink(missing_ok=True)        # gone rather than stale
            self.note("warning", f"{self.name}: {live} not written: {exc}", logging.WARNING)
        self.spec, self._applied, self._deferred = spec, files, None
        self.services.watch(self.name, spec)
        self._watch_idle(spec.settings.idle_timeout)
        self.desired = Desired.RUNNING
        self.services.save()
        self.services.cron.set_jobs(self.name, jobs, starting=starting)

    def _make_dirs(self) -> None:
        for path in (self.paths.log_dir(self.name), self.paths.data(self.name),
                     self.paths.cache(self.name)):
            path.mkdir(parents=True, exist_ok=True)
        # nginx's group only once `piku setup --fix` made it so (nginxaccess.py)
        self.paths.sockets.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
        self.paths.env_dir(self.name).mkdir(mode=0o700, parents=True, exist_ok=True)

    async def publish(self, spec: AppSpec, source: Path, processes: Mapping[str, ProcessSpec],
                      progress: Progress = quiet) -> None:
        """Route the app's traffic to ``processes``; say what nginx's workers cannot reach.

        The advice goes to the push's output each time, to the app's log when
        it changed, and stays among the app's problems (so restart, config:set
        and ps show it) until a publish finds nothing (Debian 12's 0700 home
        folders: every request a 502).
        """
        advice = await self.services.traffic.publish(self.name, spec, source, processes)
        if advice is None:                  # no site was put live
            return
        kinds = unix_kinds(spec)
        on_ports = sorted({p.kind for p in processes.values() if p.kind in kinds and p.port})
        blocked = await self.services.traffic.sockets_blocked(self.name) if on_ports else None
        if blocked is not None:
            advice.append(f"{' and '.join(on_ports)} serve on loopback ports, which any local "
                          f"user can reach, instead of unix sockets: {blocked}")
        for problem in advice:
            progress(f"-----> Warning: {problem}")
        self._warn_once("nginx", tuple(advice))

    def _ready_check(self, spec: AppSpec) -> Readiness:
        """A new web process is ready when its port answers (and PIKU_HEALTHCHECK, if set)."""
        settings = spec.settings

        async def ready(process: ProcessSpec) -> str:
            if process.address is None:
                return ""
            # A daemon-owned socket accepts before the server runs: ask it over HTTP.
            path = settings.healthcheck or ("/" if process.listen_address else None)
            # Checked from the spawn on, with the budget it had when the check began
            # after PIKU_START_SECS: an answer makes the process RUNNING sooner.
            return await wait_ready(process.address, path,
                                    settings.start_secs + settings.ready_timeout)
        return ready

    async def _stop_all(self, *, untracked: bool = True) -> None:
        """Stop every process of the app: its slots, its cron runs and (``untracked``) any
        it does not track, found in /proc: left by a start that failed, or escaped from
        its slot. A daemon shutdown skips that scan; the next boot's covers every app."""
        await asyncio.gather(self.group.stop(), self.services.cron.remove_app(self.name))
        self.claimed = 0
        if not untracked:
            return
        timeout = (self.spec.settings if self.spec else self.services.defaults).stop_timeout
        found = await stop_leftovers(str(self.paths.root), timeout, app=self.name)
        if found:
            self.note("stop", f"{self.name}: stopped {found} processes it did not track",
                      logging.WARNING)
