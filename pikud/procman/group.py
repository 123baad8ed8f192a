"""ProcessGroup: every process slot of one app, brought to a desired set of specs.

``apply()`` is reconciliation (STYLE §6): slots that are new start, slots no
longer wanted stop, and slots whose spec changed are replaced one at a time,
each new process having to reach RUNNING before the next old one goes.
``switch()`` replaces a whole generation (a deploy): the new one starts
beside the old, traffic moves once every new process is ready, and the old
one drains and stops in the background (``retiring``): the deploy that
switched has returned by then, and the outcome goes to the app's log.
``retire()`` does the same for slots a scale-down took traffic from.
"""

# Design notes:
# - Ready is the proof the app gives: a process with an address (a port or a
#   unix socket) is ready when the readiness check passes, and that makes it
#   RUNNING at once (no further PIKU_START_SECS wait: an answer proves more
#   than uptime). A process without one has no other proof than staying up
#   start_secs.
# - A retiring generation is no longer the group's (``processes``): ps, plans
#   and handovers see the new one. ``stop()`` of the whole group stops the
#   retiring ones too, at once, and ``retired()`` awaits them.
# - A retiring slot keeps its address (port or unix socket) until it stops, and
#   a listener cannot be bound twice: a slot started on that address (scaled up
#   again) waits for it.

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping

from pikud.errors import DeployError, ShuttingDown
from pikud.procman.idle import has_traffic
from pikud.procman.keeper import Keeper
from pikud.procman.logs import Follower, LogFile
from pikud.procman.plan import Plan, plan
from pikud.procman.process import Adopted, EventSink, ManagedProcess, ProcessSpec

log = logging.getLogger(__name__)

Readiness = Callable[[ProcessSpec], Awaitable[str]]            # "" when ready, else why not
Routing = Callable[[Mapping[str, ProcessSpec]], Awaitable[None]]   # move traffic to these


def settle_time(spec: ProcessSpec) -> float:
    """How long to wait for a new process to leave STARTING."""
    return spec.policy.start_secs + 5.0


async def drain(procs: Collection[ManagedProcess], grace: float) -> None:
    """Before stopping slots that traffic has just left: let their requests finish.

    They get ``grace`` seconds (nginx's old workers may still send a few),
    then as long as a connection is open or queued on their sockets, up to
    their settle time: a request may still be in flight, or queued for a
    sleeping slot it woke, which is still booting. Stopping the slot then
    would drop it with the socket.
    """
    if grace > 0 and procs:
        await asyncio.sleep(grace)
    serving = [proc for proc in procs if proc.spec.address is not None]
    if not serving:
        return
    addresses = {address for proc in serving if (address := proc.spec.address) is not None}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(settle_time(proc.spec) for proc in serving)):
            # The kernel's socket table has no event to wait on: poll it.
            while await asyncio.to_thread(has_traffic, addresses):  # noqa: ASYNC110
                await asyncio.sleep(0.05)


class ProcessGroup:
    def __init__(self, on_event: EventSink, followers: set[Follower],
                 keeper: Keeper | None = None) -> None:
        self.processes: dict[str, ManagedProcess] = {}
        self.incoming: dict[str, ManagedProcess] = {}     # a generation being started
        self._on_event = on_event
        self._followers = followers
        self._logs: dict[str, LogFile] = {}
        self._keeper = keeper or Keeper()
        self._retiring: dict[asyncio.Task[None], list[ManagedProcess]] = {}
        self.closed = False             # stopped for the daemon's shutdown: nothing starts

    @property
    def specs(self) -> dict[str, ProcessSpec]:
        return {name: proc.spec for name, proc in self.processes.items()}

    def all(self) -> list[ManagedProcess]:
        return [*self.processes.values(), *self.incoming.values()]

    def _log(self, spec: ProcessSpec) -> LogFile:
        log = self._logs.get(spec.name)
        if log is None or log.path != spec.log_path:
            log = LogFile(spec.log_path, spec.source, spec.log_max_bytes, spec.log_backups,
                          self._followers)
            self._logs[spec.name] = log
        log.max_bytes, log.backups = spec.log_max_bytes, spec.log_backups
        return log

    def close(self) -> None:
        """Start no process from now on: the daemon is shutting down, and what an action
        queued behind the shutdown's stop started would outlive the daemon."""
        self.closed = True

    def _spawn(self, spec: ProcessSpec) -> ManagedProcess:
        if self.closed:
            raise ShuttingDown(f"pikud is shutting down: {spec.name} was not started")
        proc = ManagedProcess(spec, self._on_event, self._log(spec), self._keeper)
        if not self._keeper.adopt(proc):       # a process a killed pikud left (keeper.py)
            proc.start()
        return proc

    def adopt(self, slots: Mapping[ProcessSpec, Adopted]) -> None:
        """Supervise processes a previous owner started (handover.py), as they are."""
        for spec, taken in slots.items():
            proc = self.processes[spec.name] = ManagedProcess(spec, self._on_event,
                                                              self._log(spec), self._keeper)
            proc.adopt(taken)
            self._keeper.carried(proc)

    def _new(self, spec: ProcessSpec) -> ManagedProcess:
        proc = self.processes[spec.name] = self._spawn(spec)
        return proc

    async def apply(self, desired: Mapping[str, ProcessSpec], *,
                    ready: Readiness | None = None) -> Plan:
        """Bring the running slots to ``desired``; returns what was done.

        With ``ready``, new slots must get ready (as in ``switch``) before any
        slot is stopped; if one does not, the new ones are stopped again,
        nothing else changed, and DeployError says why. Without it, a new slot
        that could not be spawned at all fails it the same way.
        """
        todo = plan(self.specs, desired)
        await self._vacated([desired[name] for name in todo.start])
        if ready is None:       # stop first: a renamed kind on a fixed PORT needs the port
            await self.stop(todo.stop)
            fresh = [self._new(desired[name]) for name in todo.start]
            await asyncio.gather(*(proc.started(settle_time(proc.spec)) for proc in fresh))
            # A crash backs off and retries; a process that could not be started at all
            # (no descriptors, fork failed) fails the change, and what it started stops.
            unstarted = [f"{proc.name} ({proc.last_exit})" for proc in fresh if proc.spawn_error]
            if unstarted:
                await self.stop(list(todo.start))
                raise DeployError("the new processes did not start: " + "; ".join(unstarted))
        else:
            fresh = [self._new(desired[name]) for name in todo.start]
            try:
                await self._check(fresh, ready)
            except BaseException:
                await self.stop(list(todo.start))
                raise
            await self.stop(todo.stop)
        await self.replace({name: desired[name] for name in todo.replace})
        return todo

    async def replace(self, specs: Mapping[str, ProcessSpec]) -> None:
        """Restart each named slot with its (new) spec, one at a time (rolling).

        It stops at the first new process that does not reach RUNNING, leaving
        the slots after it on their old spec.
        """
        for name, spec in specs.items():
            await self.stop([name])
            proc = self._new(spec)
            if not await proc.started(settle_time(spec)):
                raise DeployError(f"{name} did not start ({proc.state}, last exit: "
                                  f"{proc.last_exit or 'none'}); the processes after it "
                                  "were not replaced")

    async def switch(self, desired: Mapping[str, ProcessSpec], exclusive: Collection[str] = (),
                     ready: Readiness | None = None, route: Routing | None = None,
                     grace: float = 0.0) -> None:
        """Start the generation ``desired``; once all of it is ready, stop the old one.

        Ready means, for each process, ``ready(spec)`` returning "" (else it
        says why not) and RUNNING (see ``_ready``). Then ``route`` moves
        traffic to the new generation and it returns: the old one retires in
        the background, with ``grace`` seconds for requests in flight, and
        stops once its sockets are quiet (see ``drain``). Slots in
        ``exclusive`` cannot run twice at once (a fixed port): their old
        process stops first and comes back on failure.
        On any failure the new generation is stopped, the old one keeps
        running, and DeployError says why.
        """
        held = {name: self.processes[name].spec for name in exclusive if name in self.processes}
        await self.stop(list(held))
        self.incoming = {name: self._spawn(spec) for name, spec in desired.items()}
        try:
            await self._check(list(self.incoming.values()), ready)
            if route is not None:
                await route(desired)
        except BaseException:
            await asyncio.gather(*(proc.stop() for proc in self.incoming.values()))
            self.incoming = {}
            for spec in held.values():
                self._new(spec)
            raise
        old = list(self.processes.values())
        self.processes, self.incoming = self.incoming, {}
        self._retire_later(old, grace, "the previous generation")

    def retire(self, names: Collection[str], grace: float) -> None:
        """Take the named slots out of the group; once traffic has left them (the caller
        moved it), they drain and stop in the background, as a switch's old generation."""
        procs = [self.processes.pop(name) for name in names if name in self.processes]
        self._retire_later(procs, grace, "scaled away")

    def _retire_later(self, procs: list[ManagedProcess], grace: float, what: str) -> None:
        if procs:
            task = asyncio.create_task(self._retire(procs, grace, what), name="retire")
            self._retiring[task] = procs
            task.add_done_callback(self._retiring.pop)

    async def _retire(self, procs: list[ManagedProcess], grace: float, what: str) -> None:
        """Drain and stop slots traffic has left; say how it went in the app's log."""
        started = time.monotonic()
        names = ", ".join(proc.name for proc in procs)
        try:
            await drain(procs, grace)
            await asyncio.gather(*(proc.stop() for proc in procs))
        except Exception as exc:
            log.exception("retiring %s failed", names)
            self._on_event(None, "error", f"retire failed: {names}: "
                           f"{type(exc).__name__}: {exc}")
        else:
            self._on_event(None, "retired", f"retired: {names} ({what}, drained and "
                           f"stopped in {time.monotonic() - started:.1f}s)")
        finally:
            self._close_logs_not_in(self.processes)

    async def retired(self) -> None:
        """Wait until every generation a switch left has drained and stopped."""
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)

    async def _vacated(self, specs: Collection[ProcessSpec]) -> None:
        """Wait until no retiring slot holds an address one of ``specs`` needs."""
        addresses = {spec.address for spec in specs if spec.address is not None}
        holding = [task for task, procs in self._retiring.items()
                   if any(proc.spec.address in addresses for proc in procs)]
        if holding:
            await asyncio.gather(*holding, return_exceptions=True)

    async def _stop_retiring(self) -> None:
        """Stop the retiring generations now: their drain is cut short."""
        procs = [proc for task, old in self._retiring.items() if task.cancel() for proc in old]
        await asyncio.gather(*(proc.stop() for proc in procs))
        await self.retired()

    async def _check(self, procs: list[ManagedProcess], ready: Readiness | None) -> None:
        """Raise DeployError unless every one of ``procs`` is ready (``_ready``)."""
        problems = await asyncio.gather(*(self._ready(proc, ready) for proc in procs))
        failed = [f"{proc.name} {problem}"
                  for proc, problem in zip(procs, problems, strict=True) if problem]
        if failed:
            raise DeployError("the new processes did not start: " + "; ".join(failed))

    @staticmethod
    async def _ready(proc: ManagedProcess, ready: Readiness | None) -> str:
        """"" once ``proc`` is ready, else why not.

        A process with a port is ready once ``ready`` says so, as long as it
        has not exited meanwhile, and it is then RUNNING at once. One without
        (or with no check) is ready once RUNNING, after PIKU_START_SECS.
        """
        def why() -> str:
            return f"{proc.state} ({proc.last_exit or 'no exit'})"

        if ready is None or proc.spec.address is None:
            if not await proc.started(settle_time(proc.spec)):
                return why()
            return await ready(proc.spec) if ready is not None else ""

        async def exited() -> str:
            if await proc.started(settle_time(proc.spec)):
                await asyncio.Event().wait()        # RUNNING: the check alone decides
            return why()

        probe = asyncio.ensure_future(ready(proc.spec))
        ended = asyncio.ensure_future(exited())
        try:
            done, _ = await asyncio.wait({probe, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            probe.cancel()
            ended.cancel()
        if ended in done:
            return ended.result()
        problem = probe.result()
        if not problem and not proc.proven("it answered its readiness check"):
            return why()
        return problem

    async def stop(self, names: list[str] | tuple[str, ...] | None = None) -> None:
        """Stop the named slots (all when None, and the retiring ones) at the same time
        and forget them."""
        chosen = list(self.processes) if names is None else list(names)
        procs = [self.processes[name] for name in chosen if name in self.processes]
        retiring = [self._stop_retiring()] if names is None else []
        await asyncio.gather(*retiring, *(proc.stop() for proc in procs))  # STOPPING meanwhile
        for proc in procs:
            if self.processes.get(proc.name) is proc:
                del self.processes[proc.name]
        self._close_logs_not_in(self.processes)

    def _close_logs_not_in(self, keep: Mapping[str, ManagedProcess]) -> None:
        for name in [n for n in self._logs if n not in keep]:
            self._logs.pop(name).close()

    def retry(self) -> None:
        """Start every FATAL or backing-off slot again now."""
        for proc in self.processes.values():
            proc.start()
