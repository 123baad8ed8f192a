"""ProcessGroup: every process slot of one app, brought to a desired set of specs.

``apply()`` is reconciliation (STYLE §6): slots that are new start, slots no
longer wanted stop, and slots whose spec changed are replaced one at a time,
each new process having to reach RUNNING before the next old one goes.
``switch()`` replaces a whole generation (a deploy): the new one starts
beside the old, and the old one stops only once every new process is RUNNING.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Collection, Mapping

from pikud.errors import DeployError, ShuttingDown
from pikud.procman.idle import has_traffic
from pikud.procman.keeper import Keeper
from pikud.procman.logs import Follower, LogFile
from pikud.procman.plan import Plan, plan
from pikud.procman.process import Adopted, EventSink, ManagedProcess, ProcessSpec

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
    serving = [proc for proc in procs if proc.spec.port is not None]
    if not serving:
        return
    ports = {proc.spec.port for proc in serving if proc.spec.port is not None}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(settle_time(proc.spec) for proc in serving)):
            # The kernel's socket table has no event to wait on: poll it.
            while await asyncio.to_thread(has_traffic, ports):  # noqa: ASYNC110
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

        Ready means RUNNING and, for each process, ``ready(spec)`` returning ""
        (else it says why not). Then ``route`` moves traffic to the new
        generation, the old one gets ``grace`` seconds for requests in flight,
        and it is stopped once its sockets are quiet (see ``drain``). Slots
        in ``exclusive`` cannot run twice at once (a fixed port): their old
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
        old = self.processes
        self.processes, self.incoming = self.incoming, {}
        await drain(list(old.values()), grace)
        await asyncio.gather(*(proc.stop() for proc in old.values()))
        self._close_logs_not_in(self.processes)

    async def _check(self, procs: list[ManagedProcess], ready: Readiness | None) -> None:
        """Raise DeployError unless every one of ``procs`` reaches RUNNING and is ready."""
        started = await asyncio.gather(*(proc.started(settle_time(proc.spec)) for proc in procs))
        failed = [f"{proc.name} {proc.state} ({proc.last_exit or 'no exit'})"
                  for proc, ok in zip(procs, started, strict=True) if not ok]
        if not failed and ready is not None:
            problems = await asyncio.gather(*(ready(proc.spec) for proc in procs))
            failed = [f"{proc.name} {problem}"
                      for proc, problem in zip(procs, problems, strict=True) if problem]
        if failed:
            raise DeployError("the new processes did not start: " + "; ".join(failed))

    async def stop(self, names: list[str] | tuple[str, ...] | None = None) -> None:
        """Stop the named slots (all when None) at the same time and forget them."""
        chosen = list(self.processes) if names is None else list(names)
        procs = [self.processes[name] for name in chosen if name in self.processes]
        await asyncio.gather(*(proc.stop() for proc in procs))      # seen as STOPPING meanwhile
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
