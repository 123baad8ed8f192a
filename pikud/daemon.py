"""`pikud serve`: the daemon's entry point, its phases and its wiring.

startup (layout, subreaper, control socket, apps that were running, or
those the previous image hands over after a re-exec) -> serve (until the
shutdown trigger fires) -> shutdown (every app stopped, bounded by
``shutdown_timeout``). Signal handlers only queue the signal; one task acts
on it: SIGTERM/SIGINT shut down, SIGHUP re-reads pikud.toml, SIGUSR2
re-executes pikud in place (reexec.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from pikud import __version__, daemonargs, identity
from pikud.access.audit import AuditLog
from pikud.access.rules import RuleBook
from pikud.access.tickets import PushTickets
from pikud.app import App
from pikud.appspec import AppSpec
from pikud.control.guard import Access
from pikud.control.server import ControlServer, daemon_status
from pikud.errors import PikudError
from pikud.events import EventLog
from pikud.fds import raise_open_files_limit
from pikud.handover import HandoverError, Start, close_carried, receive
from pikud.paths import Paths
from pikud.procman import enforce
from pikud.procman.children import become_subreaper, install_orphan_reaper
from pikud.procman.keeper import Keeper
from pikud.proxy.acme import Acme
from pikud.proxy.nginx import Nginx
from pikud.proxy.routing import parse_address
from pikud.reexec import (
    SIGNALS,
    Reexec,
    block_signals,
    bridge_channel,
    release_signals,
    start_uv_threads,
)
from pikud.refresh import CloudflareRefresh
from pikud.registry import AppRegistry
from pikud.sdnotify import Notifier, listen_fds
from pikud.sealing import open_above, seal_nginx
from pikud.settings import Settings, load_settings
from pikud.traffic import Traffic
from pikud.watch import FileWatcher

if TYPE_CHECKING:
    from pikud.proxy.router import Router

log = logging.getLogger("pikud")


class Daemon:
    def __init__(self, paths: Paths, settings: Settings, loop_name: str,
                 http: tuple[str, int] | None = None) -> None:
        """``http`` set: the built-in router serves there; None: nginx fronts the apps."""
        self.paths = paths
        self.router: Router | None = None
        if http is not None:    # aiohttp is imported by a daemon that routes, only
            from pikud.proxy.router import Router
            self.router = Router(*http, settings.router)
        self.nginx = None if http is not None else Nginx(
            paths, settings.nginx_test, settings.nginx_reload, preamble=settings.nginx_preamble)
        self.acme = None if self.nginx is None else Acme(self.nginx, settings.acme_sh,
                                                         note=self._certificate_note)
        self.settings = settings
        self.loop_name = loop_name
        self.notifier = Notifier()
        self.keeper = Keeper(self.notifier, paths.process_record)
        self.passed = listen_fds()          # what systemd's store handed back (keeper.py)
        self.events = EventLog(settings.events_kept)
        self.version = __version__
        self.started = time.monotonic()         # the first boot (a re-exec carries it)
        self.image_started = self.started       # this image
        self.how = Start.BOOT
        self.control: ControlServer | None = None
        self.watcher: FileWatcher | None = None
        self._reloads: set[asyncio.Task[None]] = set()      # reloads after a file change
        self.registry = AppRegistry(paths, os.environ, settings.app_defaults, self.events,
                                    watch=self._watch, unwatch=self._unwatch,
                                    traffic=Traffic(self.router, self.nginx, paths, self.acme),
                                    ceilings=settings.ceilings, keeper=self.keeper)
        self.cloudflare = CloudflareRefresh(self.registry, settings.cloudflare_urls,
                                            settings.cloudflare_refresh_days)
        self.access = Access(RuleBook(paths.access_rules), PushTickets(),
                             AuditLog(paths.audit_log, settings.app_defaults.log_max_bytes,
                                      settings.app_defaults.log_backups))

    def _certificate_note(self, name: str, message: str, level: int) -> None:
        """acme.sh's outcome for an app: in its pikud.log and events, like its deploy's."""
        app = self.registry.apps.get(name)
        if app is not None:
            app.note("certificate", message, level)
        else:
            log.log(level, "%s", message)

    def _watch(self, name: str, spec: AppSpec) -> None:
        if self.watcher is not None:
            touch = [self.paths.app(name) / p for p in spec.settings.touch_reload]
            self.watcher.watch(name, self.paths.env_dir(name), touch)

    def _unwatch(self, name: str) -> None:
        if self.watcher is not None:
            self.watcher.unwatch(name)

    def _on_file_change(self, name: str, why: str) -> None:
        """Reload the app after an edit; not after pikud's own write of ENV or SCALING
        (config:set, ps:scale, or a failed change putting a file back)."""
        app = self.registry.apps.get(name)
        if app is None:
            return
        own = app.own_write() if why == "config" else None
        if own is not None:
            log.debug("%s: ENV and SCALING are %s; not reloaded", name, own)
            return
        task = asyncio.get_running_loop().create_task(self._reload(app, why),
                                                      name=f"reload {name}")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload(self, app: App, why: str) -> None:
        try:
            await app.reload_files(why)
        except PikudError as exc:
            app.note("error", f"{app.name}: {exc}", logging.ERROR)
        except Exception:
            log.exception("%s: reload after a file change failed", app.name)

    def control_fd(self) -> int:
        assert self.control is not None
        return self.control.fileno()

    def refused(self, reason: str) -> None:
        """A re-exec did not happen: in the log and in ``piku status``'s last errors."""
        log.error("re-exec refused: %s", reason)
        self.events.emit("", None, "reexec_refused", f"re-exec refused: {reason}")

    async def serve(self, shutdown_trigger: Callable[[], Awaitable[object]]) -> None:
        loop = asyncio.get_running_loop()
        try:
            record = receive(os.environ)    # after a re-exec: what the previous image held
        except HandoverError as exc:        # a plain start instead: apps replaced, not lost
            log.error("re-exec: %s; starting afresh: closed the %d descriptors the exec "
                      "carried, the previous image's processes are stopped and started again",
                      exc, close_carried())
            self.events.emit("", None, "error", f"re-exec: {exc}")
            record = None
        bridge = bridge_channel(os.environ)     # its bridge serves until the router accepts
        raise_open_files_limit()
        self.paths.create()
        self._identity()
        private = self.paths.make_private(traverse=identity.current().separate)
        if private:
            log.warning("permissions: took group and other access off %d files and folders "
                        "that hold config (now 0600 and 0700): %s", len(private),
                        ", ".join(str(path.relative_to(self.paths.root)) for path in private))
        become_subreaper()
        install_orphan_reaper(loop)
        enforce.use(enforce.detect())
        self.watcher = FileWatcher(self._on_file_change)
        self.registry.load()            # every app with its desired state, before any request
        adopted = None
        if record is not None:          # routes set before the router accepts again
            self.how, self.started = Start.REEXEC, record.started
            self.events.restore(record.events)
            adopted = await self.registry.adopt(record)
            log.info("re-exec: pikud %s adopted %d processes of %d apps from pikud %s",
                     __version__, self.registry.process_count(), len(adopted), record.version)
        elif self.keeper.restore(self.passed):      # after a crash, under systemd
            self.how = Start.ADOPTION
        # A router listener from systemd's store holds requests made while no pikud ran:
        # they wait in its backlog until boot has put the routes back. Otherwise the router
        # accepts first of all (after a re-exec, the bridge serves its port until then).
        held = None if record or self.router is None else self._inherited(
            "router", self.router.address_wanted)
        if self.router is not None and held is None:
            await self.router.start([socket.socket(fileno=fd) for fd in record.router]
                                    if record else None)
            self._stored("router", record is not None, self.router.listeners()[0])
            log.info("routing HTTP on %s:%d", *self.router.address)
        if bridge is not None:
            bridge.close()
            log.info("re-exec: the router accepts again; the bridge finishes and exits")
        control = self.control = ControlServer(
            self.registry, self.status, self.paths.socket, self.cloudflare,
            self.settings.control_idle_timeout, self.access)
        stored = None if record else self._inherited("control", str(self.paths.socket))
        try:
            await control.start(socket.socket(fileno=record.control) if record else stored)
        except BaseException:
            if self.router is not None and held is None:
                await self.router.stop()
            raise
        self._stored("control", stored is not None or record is not None, control.fileno())
        log.info("pikud %s listening on %s (loop: %s)", __version__, self.paths.socket,
                 self.loop_name)
        try:
            async with asyncio.TaskGroup() as tasks:
                pulse = tasks.create_task(self._watchdog())
                await self.registry.boot(adopted)
                if self.router is not None and held is not None:
                    await self.router.start([held])
                    self._stored("router", True, held.fileno())
                    log.info("routing HTTP on %s:%d", *self.router.address)
                refreshing = tasks.create_task(self.cloudflare.run())
                self.notifier.ready(self._summary())
                log.info("ready: %s", self._summary())
                await shutdown_trigger()
                log.info("shutting down: stopping %d processes", self.registry.process_count())
                self.notifier.stopping()
                tasks.create_task(self.watcher.aclose())    # no file change acted on now
                refreshing.cancel()
                for reload in list(self._reloads):
                    reload.cancel()
                try:
                    async with asyncio.timeout(self.settings.shutdown_timeout):
                        await self.registry.shutdown()
                except TimeoutError:
                    log.error("apps did not stop within %gs; leaving the rest to systemd",
                              self.settings.shutdown_timeout)
                pulse.cancel()
        finally:
            if self.acme is not None:
                await self.acme.close()
            for name in ("control", "router"):
                self.keeper.drop(name)
            await control.stop()
            if self.router is not None:
                await self.router.stop()
            self.watcher.close()
        log.info("stopped")

    def _identity(self) -> None:
        """Say who runs what, once; give the deploy user the folders root made."""
        who = identity.current()
        if who.deploy is None:
            log.info("app users: off (every app runs as uid %d)", os.geteuid())
            return
        log.info("app users: on (each app as piku-APP; builds and pikud.sock as %s)",
                 who.deploy.name)
        changed = who.own_layout(self.paths)
        if changed:
            log.info("app users: gave %s the folders root made: %s", who.deploy.name,
                     ", ".join(str(path) for path in changed))
        sealed = seal_nginx(self.paths)
        if sealed:
            log.info("app users: made root's what nginx's master reads: %s",
                     ", ".join(str(path) for path in sealed))
        above = open_above(self.paths.nginx())
        if above is not None:
            log.warning("app users: %s is not root's alone: its owner can swap %s for a "
                        "folder of its own, whose configs nginx's master (root) would read; "
                        "make every folder above it root's and not writable by others",
                        above, self.paths.nginx())

    def _inherited(self, name: str, where: object) -> socket.socket | None:
        """The listener ``name`` a previous pikud left in systemd's store, if it is bound
        to ``where`` (a path, or (host, port) with port 0 for any); else it is dropped."""
        fd = self.keeper.claim(name)
        if fd is None:
            return None
        sock = socket.socket(fileno=fd)
        bound = sock.getsockname()
        if bound == where or (isinstance(where, tuple) and where[1] == 0
                              and bound[:1] == where[:1]):
            log.info("descriptor store: %s listener taken over from the previous pikud", name)
            return sock
        sock.close()
        self.keeper.drop(name)
        return None

    def _stored(self, name: str, held: bool, fd: int) -> None:
        """Put a listener bound now in systemd's store; one it held stays as it is."""
        if not held:
            self.keeper.keep(name, fd)

    async def _watchdog(self) -> None:
        if self.notifier.watchdog_interval is None:
            return
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(self.notifier.watchdog_interval)

    def _summary(self) -> str:
        running = sum(1 for app in self.registry.apps.values() if app.running)
        return f"{running} apps, {self.registry.process_count()} processes"

    def status(self) -> dict[str, object]:
        status = daemon_status(self.started, self.loop_name, self.registry, how=self.how.value,
                               image_started=self.image_started)
        # None: nginx fronts the apps, or the router is not serving yet (the control
        # socket answers from the start of the boot).
        router = self.router
        address = router.address if router is not None and router.serving else None
        status["http"] = "{}:{}".format(*address) if address is not None else None
        return status

    def reload_settings(self) -> None:
        """SIGHUP: re-read pikud.toml; running processes are not touched."""
        try:
            settings = load_settings(self.paths.settings)
        except PikudError as exc:
            log.error("SIGHUP: kept the settings in force: %s", exc)
            return
        self.settings = settings
        self.registry.services.defaults = settings.app_defaults
        self.registry.services.ceilings = settings.ceilings
        self.cloudflare.configure(settings.cloudflare_urls, settings.cloudflare_refresh_days)
        if self.acme is not None:
            self.acme.program = settings.acme_sh
        self.events.keep(settings.events_kept)
        logging.getLogger().setLevel(settings.log_level.upper())
        log.info("SIGHUP: settings re-read from %s", self.paths.settings)


async def run(daemon: Daemon) -> None:
    """Serve until SIGTERM or SIGINT; SIGHUP re-reads the settings, SIGUSR2 re-executes.

    A SIGTERM that comes during a re-exec is acted on once the re-exec is
    refused, or by the new image (reexec.py carries it across the exec).
    """
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
    loop.set_default_executor(ThreadPoolExecutor(initializer=block_signals))
    for sig in SIGNALS:
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    if daemon.loop_name == "uvloop":
        await start_uv_threads(loop)
    release_signals()       # those a previous image left pending come now
    stop = asyncio.Event()
    reexec = Reexec(daemon, signals)

    async def handle_signals() -> None:
        """One signal's action failing is logged; the next signals are still acted on."""
        while True:
            sig = await signals.get()
            try:
                if sig == signal.SIGHUP:
                    daemon.reload_settings()
                elif sig == signal.SIGUSR2:
                    log.info("received SIGUSR2: re-executing pikud")
                    await reexec.run()
                else:
                    log.info("received %s", sig.name)
                    stop.set()
            except Exception:
                log.exception("%s: its action failed; pikud goes on handling signals",
                              sig.name)

    handler = asyncio.create_task(handle_signals())
    try:
        await daemon.serve(stop.wait)
    finally:
        handler.cancel()


def serve(args: daemonargs.Serve, loop: str, proxy: str) -> int:
    """Run the daemon on ``loop`` behind ``proxy`` (launch.py chose them) until it stops."""
    paths = Paths.from_env()
    try:
        settings = load_settings(paths.settings)
        identity.use(identity.resolve(settings.deploy_user, paths.root, str(paths.settings)))
        http = parse_address(args.http) if proxy == "builtin" else None
    except (PikudError, ValueError) as exc:
        print(f"pikud: {exc}", file=sys.stderr)
        return 1
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    # The format names no caller, thread or process, so records skip finding them (the
    # logging HOWTO's "Optimization"): a stop of 500 processes logs 1000 lines.
    logging._srcfile = None         # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    daemon = Daemon(paths, settings, loop, http)
    code = 0
    try:
        if loop == "uvloop":
            import uvloop
            uvloop.run(run(daemon))
        else:
            asyncio.run(run(daemon))
    except PikudError as exc:
        log.error("%s", exc)
        code = 1
    # Every app is stopped, the control socket removed, the loop and its executor closed:
    # what is left is the interpreter's teardown (module and object finalisation), which
    # costs ~100 ms for nothing a stop needs. Flush the log and leave with the code now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

