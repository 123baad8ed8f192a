"""SIGUSR2: pikud re-executes itself in place, like nginx's binary upgrade.

The same pid runs the code now on disk; every app process keeps running
under it with the same pid, and every descriptor that serves them (the
control socket, the router's listeners, each slot's socket and output
pipe, each cron run's pipe) is carried across the exec (handover.py).

1. Preflight: the new code must import (and read this handover format), in
   a child with the daemon's environment (on stock asyncio, ssl held off as
   the new image will hold it), within PREFLIGHT_TIMEOUT; else the re-exec is
   refused before anything is touched.
   Meanwhile the re-exec bridge starts (bridge.py), when the router serves.
2. Quiesce: the control socket stops accepting (new requests wait in its
   backlog and are answered by the new image); every app's lock is taken,
   so the changes under way (a push, a restart, a scale) finish first,
   within QUIESCE_TIMEOUT; the control connections end once answered; the
   bridge gets the routes and accepts on the router's port; the router
   stops accepting and closes its connections at a request boundary
   (proxy/connections.py).
3. Capture and exec: the record is written with no await between it and
   ``execve``, so it is one consistent instant. The bridge's channel is
   carried across (``$PIKUD_BRIDGE``); the new image closes it once its
   router accepts, and the bridge finishes its connections and exits.

Signals that come meanwhile are not lost with the old image: from the
capture on, the daemon's signals are blocked (so one sent at the instant of
the exec stays pending, and a pending signal survives ``execve``), and those
queued but not acted on during the quiesce (a SIGTERM, a SIGHUP) are raised
again, pending, for the new image, which unblocks them once its handlers are
in place (``release_signals``). A SIGUSR2 among them is the re-exec under way.

A refusal at any step (or an execve that fails) resumes everything in the
old image and logs ``re-exec refused: ...`` with the reason; a re-exec
logs ``re-exec: pikud OLD -> NEW``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING

from pikud import handover
from pikud.errors import PikudError
from pikud.procman.children import Child, spawn
from pikud.procman.oneshot import OneShotTimeout, run_once

if TYPE_CHECKING:
    from pikud.daemon import Daemon
    from pikud.proxy.router import Router

log = logging.getLogger("pikud")

PREFLIGHT_TIMEOUT = 30.0    # seconds the new code has to import
QUIESCE_TIMEOUT = 60.0      # seconds the changes under way have to finish
ROUTER_DRAIN = 10.0         # seconds the router's requests in flight have to finish
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)    # the daemon's
# The new code is imported as the new image will: on stock asyncio with ssl held off
# (launch.py; the loop is the child's argument). And what pikud.daemon imports only at
# first use (README): the router (a daemon behind nginx runs none), the build pipeline
# with its runtimes, cron's scheduler and croniter, and the sites' jinja2.
PREFLIGHT = ("import sys, pikud.launch; pikud.launch.hold_off_ssl(sys.argv[1]); "
             "import pikud, pikud.daemon, pikud.handover, pikud.proxy.router, "
             "pikud.deploy.pipeline, pikud.cron.scheduler, croniter, jinja2; "
             "print(pikud.__version__, pikud.handover.FORMAT)")
BRIDGE_ENV = "PIKUD_BRIDGE"     # the number of the bridge's channel, for the new image


class ReexecRefused(PikudError):
    """The re-exec cannot happen now; the running image goes on."""


def release_signals() -> None:
    """Unblock the daemon's signals, once its handlers are set: at every start (those a
    previous image left pending are acted on now), and when an exec did not happen."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


@contextlib.contextmanager
def held_signals(queued: asyncio.Queue[signal.Signals]) -> Iterator[None]:
    """Block the daemon's signals until the exec; raise those queued and not acted on
    again, blocked, so that they are pending for the new image (``execve`` keeps them).

    Nothing may await while they are blocked: a process spawned meanwhile would
    inherit the mask, and ignore SIGTERM.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        while not queued.empty():
            sig = queued.get_nowait()
            if sig != signal.SIGUSR2:       # the re-exec under way
                signal.raise_signal(sig)
        yield
    finally:
        release_signals()       # the exec did not happen: the handlers queue them again


async def start_uv_threads(loop: asyncio.AbstractEventLoop) -> None:
    """Start libuv's worker threads (uvloop's name resolution) with the daemon's signals
    blocked, which they keep: they are made once, at the first use, by the thread that
    asks (and inherit its mask). The host is bytes: a str one would be IDNA-encoded,
    which imports unicodedata and stringprep (about 450 KiB) for nothing."""
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        with contextlib.suppress(OSError):
            await loop.getaddrinfo(b"localhost", None)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def block_signals() -> None:
    """A worker thread's start: the daemon's signals are the main thread's alone, so none
    is caught (and lost with the image) by another thread while the main one blocks them
    for an exec."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)


async def preflight(loop: str) -> str:
    """The version of the code a re-exec would run on ``loop`` (the one running: the same
    command line and environment choose it again); ReexecRefused if it cannot run."""
    lines: list[str] = []
    try:
        info = await run_once([sys.executable, "-c", PREFLIGHT, loop], env=os.environ,
                              cwd=Path.cwd(), on_line=lines.append, timeout=PREFLIGHT_TIMEOUT)
    except OneShotTimeout as exc:
        raise ReexecRefused(f"the new code did not import within {PREFLIGHT_TIMEOUT:g}s "
                            f"({exc})") from None
    except OSError as exc:
        raise ReexecRefused(f"cannot run {sys.executable}: {exc}") from None
    if info.code != 0:
        last = lines[-1] if lines else "no output"
        raise ReexecRefused(f"the new code does not import ({info}): {last}")
    words = lines[-1].split() if lines else []
    if len(words) != 2 or words[1] != str(handover.FORMAT):
        raise ReexecRefused(f"the new code reads handover format {words[1:] or '?'}, this "
                            f"pikud writes {handover.FORMAT}")
    return words[0]


class BridgeProcess:
    """The daemon's side of the re-exec bridge (bridge.py): its process and channel."""

    def __init__(self, child: Child, channel: socket.socket) -> None:
        self.child = child
        self.channel = channel

    @classmethod
    def start(cls, router: Router) -> BridgeProcess:
        """Spawn it with the router's listeners; OSError if it cannot be."""
        ours, theirs = socket.socketpair()
        listeners = router.listeners()
        try:
            child = spawn([sys.executable, "-m", "pikud.bridge",
                           *map(str, (theirs.fileno(), *listeners))], env=os.environ,
                          cwd=Path.cwd(), pass_fds=(theirs.fileno(), *listeners))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(child, ours)

    async def serve(self, snapshot: dict[str, object]) -> None:
        """Wait until it is started, then have it accept with ``snapshot``'s routes;
        OSError or TimeoutError if it does not say it is ready in time."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(PREFLIGHT_TIMEOUT):
            said = await loop.sock_recv(self.channel, 4096)
        if not said.startswith(b'{"ready": true}'):
            raise OSError(f"the bridge said {said[:80]!r}")
        await loop.sock_sendall(self.channel, json.dumps(snapshot).encode() + b"\n")

    def keep(self, environ: MutableMapping[str, str]) -> None:
        """Carry the channel across the exec: the new image closes it (``bridge_channel``)."""
        self.channel.set_inheritable(True)
        environ[BRIDGE_ENV] = str(self.channel.fileno())

    def close(self, environ: MutableMapping[str, str]) -> None:
        """No exec: the bridge stops accepting, finishes its connections and exits."""
        environ.pop(BRIDGE_ENV, None)
        self.channel.close()


def bridge_channel(environ: MutableMapping[str, str]) -> socket.socket | None:
    """After a re-exec: the previous image's bridge channel, made private; closing it
    once the router accepts tells the bridge to finish."""
    value = environ.pop(BRIDGE_ENV, None)
    if value is None:
        return None
    try:
        channel = socket.socket(fileno=int(value))
    except (ValueError, OSError) as exc:
        log.warning("re-exec: $%s=%r names no bridge channel: %s", BRIDGE_ENV, value, exc)
        return None
    channel.set_inheritable(False)
    return channel


class Reexec:
    """One daemon's re-exec: ``run()`` on SIGUSR2."""

    def __init__(self, daemon: Daemon, queued: asyncio.Queue[signal.Signals]) -> None:
        """``queued``: the signals received and not yet acted on (daemon.run)."""
        self.daemon = daemon
        self.queued = queued
        self.running = False

    async def run(self) -> None:
        """Re-exec, or log why not and go on; returns only when it did not happen."""
        if self.running:
            log.warning("re-exec refused: a re-exec is already under way")
            return
        self.running = True
        try:
            await self._run()
        except ReexecRefused as exc:
            self.daemon.refused(str(exc))
        finally:
            self.running = False

    async def _run(self) -> None:
        daemon = self.daemon
        if not daemon.registry.settled.is_set():
            raise ReexecRefused("pikud is still booting")
        bridge = self._bridge()
        try:
            new = await preflight(daemon.loop_name)
            assert daemon.control is not None
            daemon.control.pause()
            try:
                async with self._locked():
                    # A generation a deploy left draining is no app's to hand over: let it stop.
                    await asyncio.gather(*(app.group.retired()
                                           for app in daemon.registry.apps.values()))
                    await daemon.control.drain()
                    if daemon.router is not None:
                        if bridge is not None:
                            bridge = await self._hand_port(bridge, daemon.router)
                        await daemon.router.drain(ROUTER_DRAIN)
                    try:
                        with held_signals(self.queued):
                            self._exec(new, bridge)       # returns only if execve failed
                    finally:
                        if daemon.router is not None:
                            daemon.router.resume()
            finally:
                await daemon.control.accept()
        finally:
            if bridge is not None:
                bridge.close(os.environ)

    def _bridge(self) -> BridgeProcess | None:
        """The bridge, started while the preflight runs; None without a router or if it
        cannot start (the router's port then waits in its backlog during the exec)."""
        if self.daemon.router is None:
            return None
        try:
            return BridgeProcess.start(self.daemon.router)
        except OSError as exc:
            log.warning("re-exec: no bridge, clients wait during the exec: %s", exc)
            return None

    @staticmethod
    async def _hand_port(bridge: BridgeProcess, router: Router) -> BridgeProcess | None:
        """Have the bridge accept on the router's port with its routes, or drop it."""
        try:
            await bridge.serve(router.snapshot())
        except (OSError, TimeoutError) as exc:
            log.warning("re-exec: no bridge, clients wait during the exec: %s", exc)
            bridge.close(os.environ)
            return None
        return bridge

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """Every app's lock (apps made meanwhile too), within QUIESCE_TIMEOUT."""
        held: list[asyncio.Lock] = []
        apps = self.daemon.registry.apps
        try:
            async with asyncio.timeout(QUIESCE_TIMEOUT):
                while pending := [app for app in apps.values() if app.lock not in held]:
                    for app in pending:
                        await app.lock.acquire()
                        held.append(app.lock)
        except TimeoutError:
            busy = sorted(app.name for app in apps.values() if app.lock.locked()
                          and app.lock not in held)
            for lock in held:
                lock.release()
            raise ReexecRefused(f"a change of {', '.join(busy) or 'an app'} was still going "
                                f"after {QUIESCE_TIMEOUT:g}s") from None
        try:
            yield
        finally:
            for lock in held:
                lock.release()

    def _exec(self, new: str, bridge: BridgeProcess | None) -> None:
        """Capture, hand over, execve. Returns only if the exec failed (refusing it)."""
        daemon = self.daemon
        record = handover.capture(daemon)
        fd = handover.send(record, os.environ)
        if bridge is not None:
            bridge.keep(os.environ)
        log.info("re-exec: pikud %s -> %s (%d apps, %d processes, %d cron runs carried over)",
                 record.version, new, len(record.apps),
                 sum(len(app.slots) for app in record.apps), len(record.cron))
        for handler in logging.getLogger().handlers:
            handler.flush()
        try:
            os.execve(sys.executable, sys.orig_argv, os.environ)
        except OSError as exc:
            handover.withdraw(fd, record, os.environ)
            raise ReexecRefused(f"execve of {sys.executable} failed: {exc}") from None
