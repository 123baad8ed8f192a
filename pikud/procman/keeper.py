"""What lets the next pikud adopt the apps' processes when this one dies (kill -9, OOM).

Under systemd (NOTIFY_SOCKET set), each slot's log pipe (its read end) and
daemon-owned listener go to systemd's descriptor store (sdnotify.py) as they
are made, and leave it when their process is gone; ``run/processes.json``
records every running process (pid, start time, spawn id, the names of its
descriptors) at each spawn and exit. A pikud started with descriptors from
the store reads that record and adopts each process that is still the same
one: its pid is alive and its start time in /proc/PID/stat is the recorded
one (a reused pid has another). Without NOTIFY_SOCKET nothing is stored or
written, and the next pikud replaces the leftovers instead.
"""

# Design notes:
# - Descriptor names (FDNAME): ``log.APP.KIND.N.PID`` and ``listen.APP.KIND.N.PORT``
#   or, for a unix socket, ``listen.APP.KIND.N.STEM`` (its file name without
#   ``.sock``: procman/sockets.py ``label``; app names and kinds have no ':'
#   and are printable), ``control`` and ``router``. A pid, port or socket in
#   the name keeps two generations of one slot (a deploy under way) apart:
#   FDSTOREREMOVE drops every descriptor of a name.
# - A process is adopted only into a slot whose spec is the one it was
#   started with (the same digest): ENV edited while pikud was down, or a
#   deploy cut short, gets a fresh process instead. What is recorded but not
#   adopted by the end of boot is stopped, and descriptors nobody claimed are
#   closed and dropped from the store.

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pikud.atomic import write_atomic
from pikud.procman.children import SPAWN_ID, Child, find_processes, stat_fields, terminate
from pikud.procman.process import Adopted, ManagedProcess
from pikud.procman.sockets import FIRST_FD, label
from pikud.procman.state import ProcessState
from pikud.sdnotify import Notifier
from pikud.statefile import json_object, load_json

log = logging.getLogger(__name__)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Kept:
    """One running process as the record holds it."""

    name: str                   # app:kind.N
    pid: int
    start: int                  # /proc/PID/stat starttime, clock ticks after boot
    spawn_id: str               # PIKU_SPAWN_ID: what finds its whole tree
    log: str                    # the descriptor name of its log pipe
    listen: str | None          # that of its slot's listener
    digest: str                 # of the spec it was started with
    restarts: int

    @classmethod
    def parse(cls, data: Any) -> Kept:
        raw = json_object(data)
        listen = raw["listen"]
        return cls(str(raw["name"]), int(raw["pid"]), int(raw["start"]), str(raw["spawn_id"]),
                   str(raw["log"]), None if listen is None else str(listen),
                   str(raw["digest"]), int(raw["restarts"]))


def parse_record(data: Any) -> list[Kept]:
    return [Kept.parse(entry) for entry in json_object(data).get("processes", [])]


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot), or None when it is gone or a zombie."""
    fields = stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X") or len(fields) < 20:
        return None
    return int(fields[19])


def uptime(start: int) -> float:
    """Seconds since a process with starttime ``start`` began."""
    return max(time.clock_gettime(time.CLOCK_BOOTTIME) - start / CLOCK_TICKS, 0.0)


def fd_name(kind: str, process: str, detail: int | str) -> str:
    """``log.APP.KIND.N.PID`` or ``listen.APP.KIND.N.PORT`` (``.STEM`` for a unix socket)
    for process ``APP:KIND.N``."""
    return f"{kind}.{process.replace(':', '.')}.{detail}"


def _off_fd3(fd: int) -> int:
    """``fd``, moved above fd 3 if it is there: a slot's listener is handed to its process
    as fd 3 (procman/sockets.py), which must not be the daemon's own copy."""
    if fd > FIRST_FD:
        return fd
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, FIRST_FD + 1)
    os.close(fd)
    return moved


@dataclass
class Adoptable:
    """A recorded process still alive, with the descriptors systemd handed back."""

    kept: Kept
    log_fd: int
    listen_fd: int | None

    @property
    def uptime(self) -> float:
        return uptime(self.kept.start)


class Keeper:
    """The descriptor store and the process record, for one daemon."""

    def __init__(self, notifier: Notifier | None = None, record: Path | None = None) -> None:
        self.notifier = notifier
        self.record = record
        self.enabled = notifier is not None and notifier.enabled and record is not None
        self._running: dict[str, Kept] = {}                 # by log descriptor name
        self._passed: dict[str, int] = {}                   # handed back, not yet claimed
        self._adoptable: dict[tuple[str, str], Adoptable] = {}  # by (slot, digest)

    # -- as processes come and go ---------------------------------------------

    def listening(self, process: str, listener: socket.socket) -> str:
        """Store the listener a slot just bound; returns its name in the store."""
        name = fd_name("listen", process, label(listener.getsockname()))
        self.keep(name, listener.fileno())
        return name

    def spawned(self, proc: ManagedProcess, read_end: int) -> None:
        """Store the log pipe of the process ``proc`` just spawned, and record it."""
        assert proc.child is not None
        self.keep(fd_name("log", proc.name, proc.child.pid), read_end)
        self.carried(proc)

    def carried(self, proc: ManagedProcess) -> None:
        """Record the process of ``proc``: one just spawned, or one a re-exec carried
        across (its descriptors are still in the store under the same names)."""
        child = proc.child
        if not self.enabled or child is None or proc.pipe is None:
            return
        if proc.listener is not None and proc.listen_name is None:
            proc.listen_name = fd_name("listen", proc.name, label(proc.listener.getsockname()))
        started = start_time(child.pid)
        if started is not None:         # None: gone already; its exit is on its way
            self._track(proc, Kept(proc.name, child.pid, started, child.spawn_id,
                                   fd_name("log", proc.name, child.pid), proc.listen_name,
                                   proc.spec.digest, proc.restarts))

    def _track(self, proc: ManagedProcess, kept: Kept) -> None:
        """Record ``proc``'s process while it runs; keep its log pipe stored while open."""
        assert proc.child is not None and proc.pipe is not None
        self.running(kept)
        proc.child.when_exited(lambda: self.ended(kept.log))
        proc.pipe.closed.add_done_callback(lambda closed: self.drop(kept.log))

    def keep(self, name: str, fd: int) -> None:
        """Put a copy of ``fd`` in the store as ``name``."""
        if self.enabled and self.notifier is not None:
            self.notifier.store(name, fd)

    def drop(self, name: str) -> None:
        if self.enabled and self.notifier is not None:
            self.notifier.unstore(name)

    def running(self, kept: Kept) -> None:
        """Record a process that was spawned (or adopted)."""
        if self.enabled:
            self._running[kept.log] = kept
            self._write()

    def ended(self, log_name: str) -> None:
        """The process whose log pipe is ``log_name`` has exited."""
        if self._running.pop(log_name, None) is not None:
            self._write()

    def _write(self) -> None:
        assert self.record is not None
        data = {"pid": os.getpid(), "processes": [asdict(k) for k in self._running.values()]}
        try:
            write_atomic(self.record, json.dumps(data, indent=1) + "\n", 0o600)
        except OSError as exc:      # the next pikud then replaces what this one runs
            log.error("process record not written: %s: %s", self.record, exc)

    # -- at the next start -------------------------------------------------------

    def restore(self, passed: Iterable[tuple[str, int]]) -> int:
        """Take the descriptors systemd handed back; find the recorded processes that can
        be adopted (alive, the same process, their log pipe among ``passed``).
        Returns how many."""
        self._passed = {name: _off_fd3(fd) for name, fd in passed}
        if not self._passed or self.record is None:
            return 0
        loaded = load_json(self.record, parse_record, "run/processes.json")
        for kept in loaded.data or []:
            log_fd = self._passed.get(kept.log)
            if log_fd is None or start_time(kept.pid) != kept.start:
                continue
            listen_fd = self._passed.get(kept.listen) if kept.listen else None
            self._adoptable[(kept.name, kept.digest)] = Adoptable(kept, log_fd, listen_fd)
        log.info("descriptor store: %d descriptors handed back; %d processes to adopt",
                 len(self._passed), len(self._adoptable))
        return len(self._adoptable)

    @property
    def adopting(self) -> frozenset[str]:
        """The spawn ids of the processes that may still be adopted."""
        return frozenset(a.kept.spawn_id for a in self._adoptable.values())

    def claim(self, name: str) -> int | None:
        """The descriptor handed back as ``name``, now the caller's; None if there is none."""
        return self._passed.pop(name, None)

    def adopt(self, proc: ManagedProcess) -> bool:
        """Have the new slot ``proc`` adopt the process recorded for it, if there is one
        started with the same spec (ManagedProcess.adopt; it supervises from there).
        False: nothing to adopt, the slot is to be started."""
        taken = self._adoptable.pop((proc.name, proc.spec.digest), None)
        if taken is None:
            self._hand_listener(proc)
            return False
        kept = taken.kept
        self._passed.pop(kept.log, None)
        listener = None
        if kept.listen is not None and self._passed.pop(kept.listen, None) is not None:
            assert taken.listen_fd is not None
            listener = socket.socket(fileno=taken.listen_fd)
        proc.listen_name = kept.listen if listener is not None else None
        # A process gone since restore() is adopted as exited: the policy respawns it.
        proc.adopt(Adopted(ProcessState.RUNNING, Child.adopt(kept.pid, kept.spawn_id),
                           taken.log_fd, listener, kept.restarts,
                           started_at=time.monotonic() - taken.uptime))
        if proc.child is not None and proc.pipe is not None:
            self._track(proc, kept)
        return True

    def _hand_listener(self, proc: ManagedProcess) -> None:
        """A slot whose recorded process runs another spec (ENV edited while no pikud
        ran) still gets its listener back: the new process serves the same socket,
        nothing is refused on its port, and the old one is stopped by ``finish``."""
        address = proc.spec.listen_address
        if address is None:
            return
        name = fd_name("listen", proc.name, label(address))
        fd = self._passed.pop(name, None)
        if fd is not None:
            proc.listener, proc.listen_name = socket.socket(fileno=fd), name

    async def finish(self, timeout: float) -> None:
        """After boot: stop the recorded processes no slot adopted, close the descriptors
        nobody claimed and drop them from the store."""
        left, self._adoptable = list(self._adoptable.values()), {}
        for adoptable in left:
            needle = f"{SPAWN_ID}={adoptable.kept.spawn_id}".encode()
            found = await asyncio.to_thread(find_processes, (needle,), adoptable.kept.pid)
            log.warning("not adopted: %s (pid %d) runs what its slot no longer does; "
                        "stopping %d processes", adoptable.kept.name, adoptable.kept.pid,
                        len(found))
            await terminate(adoptable.kept.pid, found, timeout)
        for name, fd in self._passed.items():
            with contextlib.suppress(OSError):
                os.close(fd)
            self.drop(name)
        self._passed = {}
