"""What one image of the daemon hands to the next: the record, its descriptors, adoption.

A re-exec (SIGUSR2, reexec.py) keeps the pid, so every app process is
still the daemon's child and every descriptor it marks inheritable is still
open, at the same number, in the new image. The old image writes a
``Record`` naming them (``capture``) into a memfd whose number it puts in
``$PIKUD_HANDOVER`` (``send``); the new image reads and closes it at start
(``receive``) and adopts what it names instead of starting or stopping
anything (``AppRegistry.adopt``).

The API for other transports (systemd's file-descriptor store after a
crash): a process is adopted from its pid, its spawn id, the read end of its
output pipe and its listening socket, each a plain number (``SlotRecord``,
``adopt_slot``). Nothing here assumes the process is a child: a pid that is
not ours is watched by pidfd, and its exit status is unknown (procman's
``Child``). ``Start`` names how the running image began; ``ADOPTION`` is the
crash path's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
from collections.abc import MutableMapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pikud.errors import PikudError
from pikud.limits import Limits
from pikud.procman.children import Child
from pikud.procman.policy import RestartPolicy
from pikud.procman.process import Adopted, ManagedProcess, ProcessSpec
from pikud.procman.state import ALIVE, ProcessState

if TYPE_CHECKING:
    from pikud.daemon import Daemon

FORMAT = 2                      # the record's layout; a new image must read this one
# 2: a slot's spec may have a unix socket (``socket``). A format-1 record (no socket)
# reads as such; an image that reads only 1 refuses a 2 and starts afresh.
READS = (1, 2)
ENV = "PIKUD_HANDOVER"          # the number of the memfd that holds the record


class Start(Enum):
    """How the running image of pikud began (``piku status``)."""

    BOOT = "boot"               # a fresh start: leftovers stopped, apps started
    REEXEC = "re-exec"          # SIGUSR2: the previous image's processes adopted
    ADOPTION = "adoption"       # after a crash: processes taken back with fds from systemd


class HandoverError(PikudError):
    """The record cannot be read: ``$PIKUD_HANDOVER`` names no valid record."""


@dataclass(frozen=True)
class SlotRecord:
    """One process slot: its spec, state and counts, and its process and descriptors."""

    spec: ProcessSpec
    state: str                          # ProcessState's value
    pid: int | None = None              # None: no process runs (BACKOFF, FATAL, IDLE, ...)
    spawn_id: str = ""
    pipe: int | None = None             # descriptor: the read end of its output pipe
    listener: int | None = None         # descriptor: its daemon-owned listening socket
    restarts: int = 0
    failures: int = 0
    started_at: float | None = None     # CLOCK_MONOTONIC (survives an exec, not a reboot)
    last_exit: str | None = None


@dataclass(frozen=True)
class AppRecord:
    """An app's running slots and what they were applied from (to rebuild its AppSpec)."""

    name: str
    env_text: str | None                # envs/APP/ENV as applied (None: no file)
    scaling_text: str | None            # envs/APP/SCALING as applied
    release: int | None
    slots: tuple[SlotRecord, ...] = ()
    deferred: tuple[str | None, str | None] | None = None   # config:set for the next restart


@dataclass(frozen=True)
class CronRecord:
    """One cron run going on: its process and output pipe."""

    app: str
    kind: str
    run_id: int
    pid: int
    spawn_id: str
    pipe: int | None
    started: str                        # ISO time (UTC) the run started
    t0: float                           # CLOCK_MONOTONIC at its start


@dataclass(frozen=True)
class Record:
    version: str                        # the pikud that wrote it
    started: float                      # CLOCK_MONOTONIC when pikud first booted
    control: int                        # descriptor: the control socket's listener
    router: tuple[int, ...] = ()        # descriptors: the built-in router's listeners
    apps: tuple[AppRecord, ...] = ()
    cron: tuple[CronRecord, ...] = ()
    events: tuple[dict[str, Any], ...] = ()     # the recent events (``piku status``'s errors)
    format: int = FORMAT

    def descriptors(self) -> list[int]:
        """Every descriptor the record names: exactly those the exec must keep open."""
        fds = [self.control, *self.router]
        for app in self.apps:
            fds += [fd for slot in app.slots for fd in (slot.pipe, slot.listener)
                    if fd is not None]
        fds += [run.pipe for run in self.cron if run.pipe is not None]
        return fds


# -- capture (old image) ---------------------------------------------------------

def slot_record(proc: ManagedProcess) -> SlotRecord:
    """A slot as it is now; its process only while it runs (an exited one is reaped)."""
    child = proc.child if proc.child is not None and not proc.child.exited else None
    if proc.state not in ALIVE:
        child = None
    reader = proc.pipe if child is not None else None
    pipe = reader.fd if reader is not None and not reader.closed.done() else None
    listener = proc.listener.fileno() if proc.listener is not None else None
    return SlotRecord(
        spec=proc.spec, state=proc.state.value, pid=child.pid if child else None,
        spawn_id=child.spawn_id if child else "", pipe=pipe, listener=listener,
        restarts=proc.restarts, failures=proc.failures,
        started_at=proc.started_at if child else None, last_exit=proc.last_exit)


def capture(daemon: Daemon) -> Record:
    """Everything ``daemon`` holds, as a record (no await: one consistent instant).

    Called once every change is finished and every app's lock is held, so no
    generation is half switched (reexec.py).
    """
    apps = []
    for app in daemon.registry.apps.values():
        applied = app.applied
        if not app.running or app.spec is None or applied is None:
            continue        # a stopped app, or one never started: the new image leaves it
        slots = tuple(slot_record(proc) for proc in app.group.processes.values())
        apps.append(AppRecord(app.name, applied[0], applied[1], app.releases.current, slots,
                              app.deferred))
    router = daemon.router.listeners() if daemon.router is not None else ()
    return Record(version=daemon.version, started=daemon.started,
                  control=daemon.control_fd(), router=tuple(router), apps=tuple(apps),
                  cron=tuple(daemon.registry.cron.capture()),
                  events=tuple(daemon.events.last(len(daemon.events.recent))))


# -- transport: a memfd named in the environment ---------------------------------

def send(record: Record, environ: MutableMapping[str, str]) -> int:
    """Write ``record`` into a memfd that the exec keeps; name it in ``environ``.

    Returns the memfd; it and every descriptor of the record are made
    inheritable (everything else the daemon opened is close-on-exec).
    """
    data = json.dumps(_plain(record)).encode()
    fd = os.memfd_create("pikud-handover", 0)       # no MFD_CLOEXEC: the exec keeps it
    try:
        os.write(fd, data)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    for kept in record.descriptors():
        os.set_inheritable(kept, True)
    environ[ENV] = str(fd)
    return fd


def withdraw(fd: int, record: Record, environ: MutableMapping[str, str]) -> None:
    """The exec did not happen: close the memfd, make the descriptors private again."""
    environ.pop(ENV, None)
    os.close(fd)
    for kept in record.descriptors():
        with contextlib.suppress(OSError):
            os.set_inheritable(kept, False)


def receive(environ: MutableMapping[str, str]) -> Record | None:
    """The record a previous image left (and its memfd closed), or None at a plain start.

    The named descriptors are made close-on-exec again, so no app process
    inherits them.
    """
    value = environ.pop(ENV, None)
    if value is None:
        return None
    try:
        fd = int(value)
        with os.fdopen(fd, "rb") as f:
            record = _record(json.loads(f.read()))
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise HandoverError(f"${ENV}={value!r}: no handover record can be read from it: "
                            f"{exc}") from exc
    for kept in record.descriptors():
        with contextlib.suppress(OSError):
            os.set_inheritable(kept, False)
    return record


def close_carried() -> int:
    """After a record that cannot be read: close every descriptor the exec carried (all
    those inheritable above stderr, which only the old image's ``send`` leaves so), so
    that a plain start binds the control socket and the router's port again. Returns
    how many were closed."""
    closed = 0
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if fd > 2 and os.get_inheritable(fd):
                os.close(fd)
                closed += 1
    return closed


# -- adoption (new image, or the crash path) ---------------------------------------

def pids(record: Record) -> list[int]:
    """Every process the record names (claim them before anything reaps orphans)."""
    return ([slot.pid for app in record.apps for slot in app.slots if slot.pid is not None]
            + [run.pid for run in record.cron])


def adopt_slot(slot: SlotRecord) -> Adopted:
    """The process and descriptors of ``slot``, ready for ``ManagedProcess.adopt``."""
    child = Child.adopt(slot.pid, slot.spawn_id) if slot.pid is not None else None
    listener = socket.socket(fileno=slot.listener) if slot.listener is not None else None
    if child is None and slot.pipe is not None:
        os.close(slot.pipe)
    return Adopted(ProcessState(slot.state), child, slot.pipe if child else None, listener,
                   slot.restarts, slot.failures, slot.started_at, slot.last_exit)


# -- JSON ---------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _limits(data: dict[str, Any] | None) -> Limits:
    """A spec's limits; an image from before limits sent none."""
    if data is None:
        return Limits()
    return Limits(**dict(data, keys=tuple((str(k), str(v)) for k, v in data["keys"])))


def _spec(data: dict[str, Any]) -> ProcessSpec:
    return ProcessSpec(**dict(
        data, env=tuple((str(k), str(v)) for k, v in data["env"]), cwd=Path(data["cwd"]),
        log_path=Path(data["log_path"]), policy=RestartPolicy(**data["policy"]),
        limits=_limits(data.get("limits"))))


def _record(data: dict[str, Any]) -> Record:
    if data.get("format") not in READS:
        raise ValueError(f"format {data.get('format')!r}, this pikud reads "
                         f"{' or '.join(map(str, READS))}")
    apps = tuple(AppRecord(**dict(
        app, slots=tuple(SlotRecord(**dict(slot, spec=_spec(slot["spec"])))
                         for slot in app["slots"]),
        deferred=tuple(app["deferred"]) if app.get("deferred") else None))
        for app in data["apps"])
    return Record(**dict(data, router=tuple(data["router"]), apps=apps,
                         cron=tuple(CronRecord(**run) for run in data["cron"]),
                         events=tuple(data["events"])))
