"""ManagedProcess: the state machine of one supervised process slot ``app:kind.N``.

One task per slot runs spawn -> wait -> decide -> back off -> respawn until the
slot is stopped. Every change of state goes through ``_set_state()``, which
checks the edge against ``state.ALLOWED``, logs one fixed phrase and reports
an event to the owner.

A slot with a daemon-owned socket can also be put to sleep (``suspend()``,
scale to zero): its process stops, the socket keeps listening, and the first
connection that waits in its backlog spawns the process again, which then
accepts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pikud import identity
from pikud.digest import sha256
from pikud.errors import InvalidTransition
from pikud.limits import Limits
from pikud.procman.children import (
    MARKER,
    Child,
    Stopped,
    descendants,
    processes,
    spawn,
    spawn_tree,
    stop_child,
    terminate,
)
from pikud.procman.enforce import Confinement, current
from pikud.procman.logs import LogFile, PipeReader
from pikud.procman.policy import RestartPolicy, decide, floored
from pikud.procman.shell import shell_argv
from pikud.procman.sockets import Address, hand_over, listen, remove_socket
from pikud.procman.state import ALIVE, ProcessState, allowed
from pikud.procman.waits import Flag, any_of, first_of

if TYPE_CHECKING:
    from pikud.procman.keeper import Keeper

log = logging.getLogger(__name__)
S = ProcessState
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

EventSink = Callable[[str | None, str, str], None]   # (process name or None, event, message)


@dataclass(frozen=True)
class Adopted:
    """A slot's process and descriptors as its previous owner left them (handover.py)."""

    state: ProcessState
    child: Child | None                 # None: no process ran (BACKOFF, FATAL, IDLE, ...)
    pipe: int | None                    # the read end of its output pipe
    listener: socket.socket | None      # its daemon-owned listening socket
    restarts: int = 0
    failures: int = 0
    started_at: float | None = None     # CLOCK_MONOTONIC, which survives an exec
    last_exit: str | None = None


@dataclass(frozen=True, slots=True)      # slots: the daemon holds one per process
class ProcessSpec:
    """Everything one process is started with; two equal specs need no restart."""

    name: str                                   # app:kind.N
    kind: str
    index: int
    command: str                                # a shell command, by Procfile contract
    env: tuple[tuple[str, str], ...]
    cwd: Path
    log_path: Path
    stop_timeout: float = 10.0
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    log_max_bytes: int = 1024 * 1024
    log_backups: int = 5
    port: int | None = None                     # the loopback port a web slot serves on
    socket: str | None = None                   # or the path of its unix socket
    inherits: bool = False                      # the daemon owns that socket (fd 3)
    listen_backlog: int = 128
    limits: Limits = field(default_factory=Limits)  # PIKU_MEMORY_MAX, ... (procman/enforce.py)

    @property
    def address(self) -> Address | None:
        """Where a web slot serves: its unix socket's path, or its loopback port."""
        return self.socket if self.socket is not None else self.port

    @property
    def upstream(self) -> str | None:
        """That address as nginx and the router name it: ``unix:PATH`` or ``127.0.0.1:PORT``."""
        if self.socket is not None:
            return f"unix:{self.socket}"
        return f"127.0.0.1:{self.port}" if self.port is not None else None

    @property
    def listen_address(self) -> Address | None:
        """The address of the daemon-owned socket handed over at fd 3, if there is one."""
        return self.address if self.inherits else None

    @property
    def argv(self) -> list[str]:
        return shell_argv(self.command)

    @property
    def execs(self) -> bool:
        """True when the shell execs one program, which then is the process itself."""
        return self.argv[-1].startswith("exec ")

    @property
    def source(self) -> str:
        """The short name logs use: ``kind.N``."""
        return f"{self.kind}.{self.index}"

    @property
    def digest(self) -> str:
        """What a process started with this spec runs, and under which limits: an adopted
        one must match it (limits from pikud.toml's [defaults] are not in its env)."""
        parts = (self.command, self.env, str(self.cwd), self.port, self.inherits,
                 self.limits.memory, self.limits.cpu, self.limits.tasks, self.limits.nofile)
        return sha256(repr(parts).encode()).hex()[:16]


def read_rss(pid: int) -> int | None:
    """Resident memory of ``pid`` and all its descendants (the shell and what it runs,
    children of any thread included); None when ``pid`` is gone."""
    total = 0
    for member in descendants(pid):
        try:
            with open(f"/proc/{member}/statm", "rb") as f:
                total += int(f.read().split()[1]) * PAGE_SIZE
        except (OSError, ValueError, IndexError):
            if member == pid:
                return None
    return total


class ManagedProcess:
    # Slots: the daemon holds one per supervised process, and a dict of 20 would cost more.
    __slots__ = ("spec", "state", "child", "restarts", "failures", "last_exit", "spawn_error",
                 "started_at", "log", "_on_event", "_task", "_stop", "_kick", "_suspend",
                 "_resumed", "settled", "listener", "pipe", "keeper", "listen_name",
                 "confinement", "_promotion")

    def __init__(self, spec: ProcessSpec, on_event: EventSink, log: LogFile,
                 keeper: Keeper | None = None) -> None:
        """``keeper``: systemd's descriptor store and the process record (keeper.py)."""
        self.spec = spec
        self.state = S.STOPPED
        self.child: Child | None = None
        self.restarts = 0
        self.failures = 0
        self.last_exit: str | None = None
        self.spawn_error: OSError | None = None     # the last try could not start a process
        self.started_at: float | None = None
        self.log = log                          # shared by every generation of the slot
        self._on_event = on_event
        self._task: asyncio.Task[None] | None = None
        self._stop = Flag()
        self._kick = Flag()
        self._suspend = Flag()                  # stop the process, keep the socket
        self._resumed = Flag()
        self.settled = Flag()                   # set unless STARTING or STOPPING
        self.listener: socket.socket | None = None
        self.pipe: PipeReader | None = None     # the running process's output
        self.keeper = keeper
        self.listen_name: str | None = None     # the listener's name in systemd's store
        self.confinement: Confinement | None = None     # the last spawn's limits (enforce.py)
        self._promotion: asyncio.TimerHandle | None = None   # RUNNING after start_secs

    @property
    def name(self) -> str:
        return self.spec.name

    def _set_state(self, new: ProcessState, phrase: str, level: int = logging.INFO) -> None:
        if not allowed(self.state, new):
            raise InvalidTransition(self.name, self.state, new)
        self.state = new
        if new in (S.STARTING, S.STOPPING):
            self.settled.clear()
        else:
            self.settled.set()
        self._report(new.value, phrase, level)

    def _report(self, event: str, phrase: str, level: int = logging.INFO) -> None:
        log.log(level, "%s", phrase)
        self._on_event(self.name, event, phrase)

    # -- control -------------------------------------------------------------

    def start(self) -> None:
        """Run the slot; a FATAL or backing-off slot is retried at once."""
        self._stop.clear()
        self.failures = 0
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._supervise(), name=self.name)
        else:
            self._kick.set()

    def adopt(self, taken: Adopted) -> None:
        """Supervise a process this slot's previous owner started (handover.py), instead
        of spawning one: its state, counts and start time go on as they were.

        Adoption restores a state rather than moving along an edge, so it sets
        ``state`` directly (it is not a transition) and reports ``adopted``. A
        slot whose process is gone, or that had none (backing off, FATAL),
        carries on as after an exit: the policy respawns it. An IDLE slot
        sleeps on its socket again.
        """
        assert self._task is None, f"{self.name} is already supervised"
        self.listener = taken.listener
        self.restarts, self.failures = taken.restarts, taken.failures
        self.last_exit, self.started_at = taken.last_exit, taken.started_at
        child, state = taken.child, taken.state
        if child is not None and taken.pipe is not None:
            self.pipe = PipeReader(taken.pipe, self.log.write_line)
        if child is not None:
            # STOPPING is taken as RUNNING: a stop is an action, and none crosses a re-exec.
            self.child = child
            self.confinement = current().adopted(child.pid, self.spec.limits)
            state = taken.state if taken.state in (S.STARTING, S.RUNNING) else S.RUNNING
        elif taken.state is S.IDLE and self.listener is not None:
            state = S.IDLE
            self._suspend.set()
        else:
            state = S.EXITED if taken.state in ALIVE else taken.state
            self.started_at = None
        self.state = state
        if state is S.STARTING:
            self.settled.clear()
        else:
            self.settled.set()
        pid = f"pid {child.pid}" if child is not None else "no process"
        self._report("adopted", f"adopted: {self.name} with {pid} ({state})")
        self._task = asyncio.create_task(self._supervise(child), name=self.name)

    async def stop(self) -> None:
        """Stop gracefully (SIGTERM to the group, then SIGKILL after stop_timeout)."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):     # already logged by _supervise
                await asyncio.shield(self._task)

    def suspend(self) -> None:
        """Stop the running process but keep listening; a connection brings it back."""
        if self.listener is not None and self.state is S.RUNNING:
            self._resumed.clear()
            self._suspend.set()

    def resume(self) -> None:
        """Spawn a suspended slot's process again now (or keep it from being suspended)."""
        self._suspend.clear()
        self._resumed.set()

    async def started(self, timeout: float) -> bool:
        """Wait until a freshly started slot leaves STARTING; True when it is RUNNING."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.settled.wait()
        return self.state is S.RUNNING

    # -- the supervision loop ------------------------------------------------

    async def _supervise(self, adopted: Child | None = None) -> None:
        try:
            while not self._stop.is_set():
                try:
                    child = await self._launch(adopted)
                    if child is not None:
                        try:
                            # The slot waits here for as long as its process runs, in this
                            # frame alone (one per process: no coroutine of its own for it).
                            asked = await any_of(child.ended, self._stop, self._suspend)
                        finally:
                            if self._promotion is not None:
                                self._promotion.cancel()
                                self._promotion = None
                        await self._ended(child, asked)
                    adopted = None
                except Exception as exc:
                    log.exception("supervision of %s failed", self.name)
                    await self._fault(exc)
        except Exception:
            log.exception("supervision of %s failed", self.name)
            raise
        finally:
            if self.listener is not None:
                self.listener.close()
                self.listener = None
            if self.keeper is not None and self.listen_name is not None:
                self.keeper.drop(self.listen_name)
            self.listen_name = None
            if self.spec.socket is not None:    # the slot is gone, and so is its address
                remove_socket(self.spec.socket)
            current().release(self.confinement)
            self.confinement = None
            if self.state in (S.BACKOFF, S.FATAL, S.EXITED, S.IDLE):
                # BACKOFF/FATAL/EXITED/IDLE -> STOPPED: stop requested while no process ran
                self._set_state(S.STOPPED, f"stopped: {self.name} (was not running)")

    async def _launch(self, adopted: Child | None = None) -> Child | None:
        """The process of this turn, spawned (or adopted) with its promotion to RUNNING
        set; None when the turn is over already (a sleep while suspended, a failed spawn)."""
        if self._suspend.is_set() and adopted is None:
            await self._sleep_until_connection()
            return None
        try:
            child = adopted or self._spawn()
        except OSError as exc:
            # * -> STARTING -> BACKOFF/FATAL: it could not even start (cwd gone, no fds)
            self.spawn_error = exc
            self.last_exit = f"could not start: {exc}"
            self._set_state(S.STARTING, f"spawn failed: {self.name}: {exc}", logging.ERROR)
            await self._retry_after(0.0, self.last_exit)
            return None
        up = time.monotonic() - (self.started_at or time.monotonic())
        self._promotion = asyncio.get_running_loop().call_later(
            max(self.spec.policy.start_secs - up, 0.0), self._promote)
        return child

    async def _ended(self, child: Child, asked: Flag | None) -> None:
        """The end of a turn: the process exited, or the stop or suspend ``asked`` came
        first. A request withdrawn since (a start right behind a stop) is still a stop:
        the flags alone would take it for a suspend, and a slot without a socket to IDLE."""
        if child.exited:
            await self._after_exit(child)
        elif asked is self._suspend and not self._stop.is_set():
            # STOPPING -> IDLE: no traffic for the app's idle timeout
            await self._terminate(child, S.IDLE, "idle")
        else:
            await self._terminate(child)

    async def _fault(self, exc: Exception) -> None:
        """Supervision met an error it did not expect: stop what the slot ran, go FATAL
        with the reason, and retry after the cool-off (or at ``start``), as a crash loop
        would. Never left STARTING with nothing running and nothing to wake it."""
        why = f"supervision failed ({type(exc).__name__}: {exc})"
        self._kick.clear()      # as in _retry_after
        if self.child is not None:
            await stop_child(self.child, self.spec.stop_timeout, self._killed,
                             leader_first=self.spec.execs)
        self.child, self.started_at, self.last_exit = None, None, why
        delay = floored(self.spec.policy.fatal_cooloff, 0.0)
        # * -> FATAL: supervision failed; what ran is stopped, retried after the cool-off
        self._set_state(S.FATAL, f"gave up: {self.name} entered FATAL state, {why}; "
                        f"retrying in {delay:g}s", logging.ERROR)
        await self._pause(delay)

    def _spawn(self) -> Child:
        argv, passed = self.spec.argv, tuple[int, ...]()
        address = self.spec.listen_address
        if address is not None:
            if self.listener is None:           # bound once, kept across respawns
                self.listener = listen(address, self.spec.listen_backlog)
                if self.keeper is not None:
                    self.listen_name = self.keeper.listening(self.name, self.listener)
            passed = (self.listener.fileno(),)
            argv = hand_over(self.spec.command, passed[0])
        elif self.spec.socket is not None:
            remove_socket(self.spec.socket)     # its server binds it, and cannot over a stale one
        argv = identity.current().as_app(self.name.partition(":")[0], argv)
        enforcer = current()
        enforcer.release(self.confinement)      # the last spawn's tree is gone by now
        self.confinement = None
        if self.spec.limits:
            argv, self.confinement = enforcer.confine(self.name, argv, self.spec.limits)
        read_end, write_end = os.pipe()
        env = dict(self.spec.env)
        env[MARKER] = self.name
        try:
            child = spawn(argv, env=env, cwd=self.spec.cwd, output=write_end, pass_fds=passed)
        except OSError:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        self.pipe = PipeReader(read_end, self.log.write_line)
        self.child, self.spawn_error = child, None
        self.started_at = time.monotonic()
        if self.keeper is not None:
            self.keeper.spawned(self, read_end)
        # STOPPED/BACKOFF/EXITED/FATAL -> STARTING: spawned
        self._set_state(S.STARTING, f"spawned: {self.name} with pid {child.pid}")
        return child

    def proven(self, why: str) -> bool:
        """A STARTING process gave its proof of readiness (``why``): RUNNING now, without
        waiting out start_secs. False when it is not STARTING with a live process."""
        if self.state is S.RUNNING:
            return True
        if self.state is not S.STARTING or self.child is None or self.child.exited:
            return False
        self.failures = 0
        # STARTING -> RUNNING: proved ready
        self._set_state(S.RUNNING, f"success: {self.name} entered RUNNING state, {why}")
        return True

    def _promote(self) -> None:
        self._promotion = None
        if self.state is S.STARTING and self.child and not self.child.exited:
            self.failures = 0
            # STARTING -> RUNNING: stayed up start_secs
            self._set_state(S.RUNNING, f"success: {self.name} entered RUNNING state, "
                            f"process has stayed up for > {self.spec.policy.start_secs:g}s")

    async def _sleep_until_connection(self) -> None:
        """IDLE: wait for a connection in the socket's backlog (or a resume, or a stop).

        The daemon only watches the socket; the process it spawns accepts the
        waiting connection itself.
        """
        assert self.listener is not None
        loop, fd = asyncio.get_running_loop(), self.listener.fileno()

        def connection_waiting() -> None:
            loop.remove_reader(fd)
            self._report("waking", f"waking: {self.name} (a connection is waiting)")
            self.resume()

        loop.add_reader(fd, connection_waiting)
        try:
            await any_of(self._stop, self._resumed)
        finally:
            loop.remove_reader(fd)

    async def _after_exit(self, child: Child) -> None:
        info = await child.wait()
        uptime = time.monotonic() - (self.started_at or 0.0)
        self.last_exit = str(info)
        self.started_at = None
        if self._stop.is_set() or self._suspend.is_set():
            # STARTING/RUNNING -> STOPPING -> STOPPED/IDLE: exited as the stop (or suspend)
            # arrived; a suspended slot sleeps as if the daemon had stopped it
            final = S.STOPPED if self._stop.is_set() else S.IDLE
            self._set_state(S.STOPPING, f"stopping: {self.name}")
            stopped = await self._stop_tree(child)
            self._set_state(final, f"{final.value.lower()}: {self.name} ({info}{stopped.note()})")
            return
        self.restarts += 1
        self.last_exit = ended = f"{info}{current().note(self.confinement, info.code)}"
        self.log.write_line(f"pikud: {self.name} {ended} after {uptime:.1f}s")
        if self.state is S.RUNNING:     # proved ready before start_secs: a stable run all the same
            uptime = max(uptime, self.spec.policy.start_secs)
        await self._retry_after(uptime, ended, child)

    async def _retry_after(self, uptime: float, info: str, child: Child | None = None) -> None:
        """Decide (policy.decide) and wait before the next spawn of an ended or failed try;
        meanwhile stop what the ended ``child`` left running."""
        self._kick.clear()      # a start from now on ends the wait, even one made meanwhile
        decision = decide(uptime, self.failures, self.spec.policy)
        self.failures = decision.failures
        if decision.state is S.EXITED:
            # RUNNING -> EXITED: exited after a stable run; respawn at once
            self._set_state(S.EXITED, f"exited: {self.name} ({info}; not expected)",
                            logging.WARNING)
        elif decision.state is S.BACKOFF:
            # STARTING -> BACKOFF: quick failure, retries left
            self._set_state(S.BACKOFF, f"backoff: {self.name} in {decision.delay:g}s "
                            f"(attempt {decision.failures}, {info})", logging.WARNING)
        else:
            # STARTING -> FATAL: too many quick failures; retried after the cool-off
            self._set_state(S.FATAL, f"gave up: {self.name} entered FATAL state, too many "
                            f"start retries too quickly ({info}); retrying in "
                            f"{decision.delay:g}s", logging.ERROR)
        loop = asyncio.get_running_loop()
        decided = loop.time()
        if child is not None:
            await self._stop_tree(child)
        await self._pause(decision.delay - (loop.time() - decided))

    async def _pause(self, delay: float) -> None:
        """Sleep before a respawn; a stop, or a start made since the slot's process ended
        (the kick is cleared then: one while it ran is no reason to skip a back-off),
        ends it early."""
        if delay <= 0:
            return
        await first_of(self._stop, self._kick, asyncio.sleep(delay))

    async def _stop_tree(self, child: Child) -> Stopped:
        """Stop whatever is left of ``child``'s spawn once its main process has exited:
        its session and what was re-parented to us (a shell's pipeline, a server's
        workers). The slot owns a process tree, not a pid, and nothing of the old tree
        may hold a port or a queue beside the next spawn."""
        left = spawn_tree(child)
        if left:
            self._report("leftovers", f"leftovers: {self.name} stopping "
                         f"{processes(len(left))} left by pid {child.pid}", logging.WARNING)
        stopped = await terminate(child.pid, left, self.spec.stop_timeout, self._killed)
        self.child = None
        return stopped

    def _killed(self, count: int) -> None:
        self._report("killed", f"killed: {self.name} did not stop within "
                     f"{self.spec.stop_timeout:g}s; sent SIGKILL to {processes(count)}",
                     logging.WARNING)

    async def _terminate(self, child: Child, final: ProcessState = S.STOPPED,
                         why: str = "stop requested") -> None:
        # STARTING/RUNNING -> STOPPING: stop (or suspend) requested
        self._set_state(S.STOPPING, f"stopping: {self.name} (pid {child.pid}, {why})")
        info, stopped = await stop_child(child, self.spec.stop_timeout, self._killed,
                                         leader_first=self.spec.execs)
        self.last_exit = str(info)
        self.child, self.started_at = None, None
        # STOPPING -> STOPPED/IDLE: the process group is gone
        self._set_state(final, f"{final.value.lower()}: {self.name} ({info}{stopped.note()})")

    # -- reporting -----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        alive = self.child is not None and not self.child.exited and self.state in ALIVE
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "index": self.spec.index,
            "pid": self.child.pid if alive and self.child else None,
            "state": self.state.value,
            "uptime": (time.monotonic() - self.started_at) if alive and self.started_at else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "rss": read_rss(self.child.pid) if alive and self.child else None,
            "port": self.spec.port,
            "socket": self.spec.socket,
            "limits": self.spec.limits.table(),
            "usage": (current().usage(self.confinement, self.child.pid)
                      if alive and self.child and self.spec.limits else {}),
        }
