"""ProcessGroup: every process slot of one app, brought to a desired set of specs.

``apply()`` is reconciliation (STYLE §6): slots that are new start, slots no
longer wanted stop, and slots whose spec changed are replaced one at a time,
each new process having to reach RUNNING before the next old one goes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pikud.errors import DeployError
from pikud.procman.logs import Follower
from pikud.procman.plan import Plan, plan
from pikud.procman.process import EventSink, ManagedProcess, ProcessSpec


def settle_time(spec: ProcessSpec) -> float:
    """How long to wait for a new process to leave STARTING."""
    return spec.policy.start_secs + 5.0


class ProcessGroup:
    def __init__(self, on_event: EventSink, followers: set[Follower]) -> None:
        self.processes: dict[str, ManagedProcess] = {}
        self._on_event = on_event
        self._followers = followers

    @property
    def specs(self) -> dict[str, ProcessSpec]:
        return {name: proc.spec for name, proc in self.processes.items()}

    def _new(self, spec: ProcessSpec) -> ManagedProcess:
        proc = ManagedProcess(spec, self._on_event, self._followers)
        self.processes[spec.name] = proc
        proc.start()
        return proc

    async def apply(self, desired: Mapping[str, ProcessSpec], *, rolling: bool = True) -> Plan:
        """Bring the running slots to ``desired``; returns what was done."""
        todo = plan(self.specs, desired)
        await self.stop(todo.stop)
        fresh = [self._new(desired[name]) for name in todo.start]
        await asyncio.gather(*(proc.started(settle_time(proc.spec)) for proc in fresh))
        await self.replace({name: desired[name] for name in todo.replace}, rolling=rolling)
        return todo

    async def replace(self, specs: Mapping[str, ProcessSpec], *, rolling: bool = True) -> None:
        """Restart each named slot with its (new) spec, one at a time when rolling.

        A rolling replace stops at the first new process that does not reach
        RUNNING, leaving the slots after it on their old spec.
        """
        if not rolling:
            await self.stop(list(specs))
            for spec in specs.values():
                self._new(spec)
            return
        for name, spec in specs.items():
            await self.stop([name])
            proc = self._new(spec)
            if not await proc.started(settle_time(spec)):
                raise DeployError(f"{name} did not start ({proc.state}, last exit: "
                                  f"{proc.last_exit or 'none'}); the processes after it "
                                  "were left as they were")

    async def stop(self, names: list[str] | tuple[str, ...] | None = None) -> None:
        """Stop the named slots (all when None) at the same time and forget them."""
        chosen = list(self.processes) if names is None else list(names)
        procs = [self.processes[name] for name in chosen if name in self.processes]
        await asyncio.gather(*(proc.stop() for proc in procs))      # seen as STOPPING meanwhile
        for proc in procs:
            proc.log.close()
            if self.processes.get(proc.name) is proc:
                del self.processes[proc.name]

    def retry(self) -> None:
        """Start every FATAL or backing-off slot again now."""
        for proc in self.processes.values():
            proc.start()
