"""Supervision driven in-process, without a daemon: real children, awaited events.

``Harness`` builds ``ManagedProcess`` slots and ``ProcessGroup``s the way the
app layer does, with policy values short enough that a crash loop runs in a
fraction of a second. ``Events`` is their event sink and the follower of their
logs: a test awaits the event that proves a thing, with a deadline, instead
of polling states or sleeping. Every child carries ``PIKU_ROOT=<tmp_path>``, so
the harness can check at the end that nothing it started is left running.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

from pikud.procman.group import ProcessGroup
from pikud.procman.logs import Follower, LogFile
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import ManagedProcess, ProcessSpec
from tests.conftest import app_processes

DEADLINE = 10.0
# A start_secs short enough for speed, long enough that a loaded machine still
# runs `exit 1` well within it (a quick failure) and `sleep 300` past it.
QUICK = RestartPolicy(start_secs=0.2, backoff_base=0.1, backoff_max=0.4, start_retries=3,
                      fatal_cooloff=600)

Event = tuple[str | None, str, str]     # (process name or None for the app, event, phrase)


class Events:
    """Every event the slots report, and every line they log, in order; awaitable."""

    def __init__(self) -> None:
        self.seen: list[Event] = []
        self.lines: list[tuple[str, str]] = []      # (source kind.N, timestamped line)
        self._new = asyncio.Event()

    def __call__(self, name: str | None, event: str, phrase: str) -> None:
        self.seen.append((name, event, phrase))
        self._new.set()

    def follow(self, source: str, line: str) -> None:
        self.lines.append((source, line))
        self._new.set()

    def of(self, name: str | None) -> list[tuple[str, str]]:
        """(event, phrase) of one slot, in order."""
        return [(event, phrase) for who, event, phrase in self.seen if who == name]

    async def until(self, found: Callable[[], object], what: str,
                    deadline: float = DEADLINE) -> object:
        """Wait until ``found()`` is truthy (checked at each new event); its value."""
        try:
            async with asyncio.timeout(deadline):
                while not (value := found()):
                    self._new.clear()
                    await self._new.wait()
                return value
        except TimeoutError:
            raise AssertionError(f"no {what} within {deadline:g}s; events: "
                                 f"{self.seen}") from None

    async def nth(self, name: str | None, event: str, count: int = 1,
                  deadline: float = DEADLINE) -> str:
        """The phrase of the ``count``-th ``event`` of ``name``, once it happened."""
        def phrases() -> list[str]:
            return [phrase for seen, phrase in self.of(name) if seen == event]
        await self.until(lambda: len(phrases()) >= count, f"{event} #{count} of {name}",
                         deadline)
        return phrases()[count - 1]

    async def line(self, source: str, text: str, deadline: float = DEADLINE) -> None:
        """Wait until ``source`` (kind.N) has logged a line ending in ``text``."""
        await self.until(lambda: any(who == source and line.endswith(" " + text)
                                     for who, line in self.lines),
                         f"the line {text!r} from {source}", deadline)


class Harness:
    """Makes specs, slots and groups under ``root``, and stops all of them at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.events = Events()
        self.followers: set[Follower] = {self.events.follow}
        self.procs: list[ManagedProcess] = []
        self.groups: list[ProcessGroup] = []
        self.logs: list[LogFile] = []

    def spec(self, command: str, name: str = "t:worker.1", *, stop_timeout: float = 2.0,
             policy: RestartPolicy = QUICK) -> ProcessSpec:
        kind, index = name.split(":", 1)[1].split(".")
        return ProcessSpec(name=name, kind=kind, index=int(index), command=command,
                           env=(("PATH", os.environ["PATH"]), ("PIKU_ROOT", str(self.root))),
                           cwd=self.root, log_path=self.root / f"{kind}.{index}.log",
                           stop_timeout=stop_timeout, policy=policy)

    def process(self, spec: ProcessSpec) -> ManagedProcess:
        """A slot for ``spec``, not started yet."""
        log = LogFile(spec.log_path, spec.source, 1 << 20, 1, self.followers)
        proc = ManagedProcess(spec, self.events, log)
        self.procs.append(proc)
        self.logs.append(log)
        return proc

    def group(self) -> ProcessGroup:
        group = ProcessGroup(self.events, self.followers)
        self.groups.append(group)
        return group

    async def close(self) -> None:
        async with asyncio.timeout(DEADLINE):
            for group in self.groups:
                await asyncio.gather(*(proc.stop() for proc in group.incoming.values()))
                await group.stop()
            await asyncio.gather(*(proc.stop() for proc in self.procs))
        for log in self.logs:
            log.close()
        assert app_processes(self.root) == set(), "a child outlived its slot"


def gone(pid: int) -> bool:
    """True once ``pid`` has been reaped (a zombie still has its /proc entry)."""
    return not os.path.exists(f"/proc/{pid}")
