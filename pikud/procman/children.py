"""Spawning children and learning of their exit without a thread or a poll.

Design notes: ``subprocess.Popen`` takes the vfork fast path and works under
uvloop and asyncio alike; each child's exit is seen through a pidfd watched on
the loop (one epoll set for all of them: readers.py) and read with
``waitid(P_PIDFD)`` (FACTS.md). The daemon is a child subreaper, so
grandchildren that daemonize are re-parented to it; a SIGCHLD handler (it only
schedules a sweep on the loop) reaps those, and only those: pids we spawned
ourselves are reaped by their own pidfd waiter, never by the sweep.

Reading the daemon's children costs a pass over every one of them, so a
stop reads them at most once per turn of the loop (the stops begun in one
turn, hundreds in a full stop, share one snapshot of the orphans) and a
sweep never does (it peeks at exited children with WNOWAIT). Before, each
stop and each exit read them all: a stop of N processes was quadratic.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import itertools
import logging
import os
import select
import signal
import subprocess
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pikud import identity
from pikud.procman.descriptors import check_headroom, kept
from pikud.procman.readers import readers

log = logging.getLogger(__name__)

PR_SET_CHILD_SUBREAPER = 36
# Every child carries PIKU_PROCESS=app:kind.N and PIKU_ROOT=<root> in its environment:
# together they find a slot's descendants that left its process group, and the
# processes a previous daemon of the same root left behind.
MARKER = "PIKU_PROCESS"


@dataclass(frozen=True)
class ExitInfo:
    code: int | None            # exit status, or None when killed by a signal
    signal: int | None
    adopted: bool = False       # not our child (adopted after a crash): no status to read

    @classmethod
    def from_waitid(cls, result: os.waitid_result) -> ExitInfo:
        if result.si_code == os.CLD_EXITED:
            return cls(result.si_status, None)
        return cls(None, result.si_status)

    def __str__(self) -> str:
        if self.adopted:
            return "status unknown: adopted"
        if self.code is None and self.signal is None:
            return "exit status unknown"
        if self.signal is not None:
            return f"killed by {signal.Signals(self.signal).name}"
        return f"exit status {self.code}"


@dataclass(frozen=True)
class Stopped:
    """What a stop found: how many processes, and how many of them needed SIGKILL."""

    found: int
    killed: int

    def note(self) -> str:
        """What to add to the child's own exit in a log line: nothing, or the SIGKILL."""
        if not self.killed:
            return ""
        return f"; SIGKILL needed for {processes(self.killed)}"


def processes(count: int) -> str:
    """``1 process``, ``2 processes``: for log lines."""
    return f"{count} process" + ("" if count == 1 else "es")


KillNote = Callable[[int], None]     # called with how many processes get SIGKILL

_spawned: set[int] = set()      # pids whose exit their own Child waiter reads
_spawn_count = itertools.count(1)
# Unique per image of the daemon: a re-exec keeps the pid and restarts the count.
_IMAGE = f"{os.getpid()}-{os.urandom(4).hex()}"
SPAWN_ID = "PIKU_SPAWN_ID"      # unique per spawn: what finds one spawn's whole tree


class Child:
    """One spawned (or adopted) OS process, its pidfd, and an awaitable exit.

    A child adopted after a re-exec is still ours: its exit status is read
    as for a fresh spawn. One adopted after a crash of the daemon is not
    (pidfds work for any process, FACTS.md): its exit is seen, its status is
    unknown (``ExitInfo(None, None)``).
    """

    __slots__ = ("pid", "spawn_id", "_exit", "pidfd")     # one per running process

    def __init__(self, pid: int, spawn_id: str) -> None:
        self.pid = pid
        self.spawn_id = spawn_id
        loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitInfo] = loop.create_future()
        try:
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError:      # an adopted pid that is gone already: reaped elsewhere
            self.pidfd = -1
            self._exit.set_result(ExitInfo(None, None))
            return
        try:
            readers().add(self.pidfd, self._on_exit)
        except BaseException:           # epoll_ctl failed (ENOSPC, ENOMEM): no pidfd is left
            os.close(self.pidfd)
            raise

    @classmethod
    def adopt(cls, pid: int, spawn_id: str) -> Child:
        """Watch ``pid``, spawned by this daemon's previous image (or a crashed daemon)."""
        claim([pid])
        child = cls(pid, spawn_id)
        if child.exited:
            _spawned.discard(pid)
        return child

    def _on_exit(self) -> None:
        loop = asyncio.get_running_loop()
        readers().remove(self.pidfd)
        try:
            result = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG)
            info = ExitInfo.from_waitid(result) if result else ExitInfo(None, None)
        except ChildProcessError:       # not our child (adopted after a crash): no status
            info = ExitInfo(None, None, adopted=True)
        os.close(self.pidfd)
        _spawned.discard(self.pid)
        sweep_soon(loop)    # orphans appear when a parent exits; SIGCHLD may belong to libuv
        if not self._exit.done():
            self._exit.set_result(info)

    @property
    def exited(self) -> bool:
        return self._exit.done()

    @property
    def ended(self) -> asyncio.Future[ExitInfo]:
        """Done once the process has exited: to watch, never to cancel (``wait`` shields it)."""
        return self._exit

    async def wait(self) -> ExitInfo:
        return await asyncio.shield(self._exit)

    def when_exited(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the process has exited (soon, if it has)."""
        self._exit.add_done_callback(lambda exit: callback())


def claim(pids: Sequence[int]) -> None:
    """Mark ``pids`` as watched by a Child of their own, so no orphan sweep reaps them:
    processes to adopt, claimed before anything else may reap."""
    _spawned.update(pids)


def spawn(argv: Sequence[str], *, env: Mapping[str, str], cwd: Path, output: int | None = None,
          stdin: int | None = subprocess.DEVNULL, pass_fds: Sequence[int] = (),
          errors: int | None = subprocess.STDOUT) -> Child:
    """Start ``argv`` in its own session (so its group can be signalled whole).

    The child and everything it starts carry a unique PIKU_SPAWN_ID, so that
    stopping it finds descendants that left the group, and nothing else. A
    child that cannot be watched (no descriptor left for its pidfd) is killed
    before the error goes on: nothing runs that the daemon does not track.
    """
    check_headroom(len(_spawned))
    spawn_id = f"{_IMAGE}.{next(_spawn_count)}"
    argv, env = identity.current().past_root(argv, env)     # app users: not into root
    popen = subprocess.Popen(
        argv, env={**env, SPAWN_ID: spawn_id}, cwd=cwd, stdin=stdin,
        stdout=output, stderr=errors if output is not None else None,
        pass_fds=tuple(pass_fds), start_new_session=True, close_fds=True,
    )
    try:
        child = Child(popen.pid, spawn_id)
    except OSError:
        os.killpg(popen.pid, signal.SIGKILL)        # its own session: nothing else is in it
        popen.wait()
        raise
    _spawned.add(popen.pid)
    # The Child reads the exit through its pidfd, and the Popen (half a KiB with its
    # argv) is let go. A returncode keeps its finalizer from reaping the pid (its
    # status is the Child's) or warning that the process still runs.
    popen.returncode = 0
    return child


def spawn_reserve() -> int:
    """Descriptors the next spawn needs free (procman/descriptors.py): the router's too."""
    return kept(len(_spawned))


def become_subreaper() -> None:
    """Have orphaned descendants re-parented to us, so we can stop and reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("could not become a child subreaper: %s", os.strerror(ctypes.get_errno()))


def install_orphan_reaper(loop: asyncio.AbstractEventLoop) -> None:
    """On SIGCHLD, schedule a sweep that reaps exited children we did not spawn: once for
    all the signals that come before it runs (a stop of 500 processes sends 500)."""
    def on_sigchld(signum: int, frame: object) -> None:
        global _sweep_asked
        if not _sweep_asked:
            _sweep_asked = True
            loop.call_soon_threadsafe(sweep_soon, loop)
    signal.signal(signal.SIGCHLD, on_sigchld)


_sweep_asked = False            # a SIGCHLD asked for a sweep that has not run yet
_sweep_due = False              # a sweep is scheduled and has not run yet
_orphans: set[int] | None = None     # this turn's snapshot of orphans(), if taken


def sweep_soon(loop: asyncio.AbstractEventLoop) -> None:
    """Reap orphans in a later callback of the loop, once for every request made before it
    runs: it reads the children after the exits that asked for it."""
    global _sweep_due
    if not _sweep_due:
        _sweep_due = True
        loop.call_soon(_sweep)


def _sweep() -> None:
    global _sweep_due, _sweep_asked
    _sweep_due = _sweep_asked = False     # a SIGCHLD from here on asks for the next one
    reap_orphans()


def orphans() -> set[int]:
    """Our children that no Child watches (re-parented to us), read once per turn of the loop.

    Each stop looks here for its spawn's re-parented processes; a snapshot a
    few callbacks old is as good as one read a moment before the signal.
    """
    global _orphans
    if _orphans is None:
        _orphans = own_children() - _spawned
        asyncio.get_running_loop().call_soon(_forget_orphans)
    return _orphans - _spawned


def _forget_orphans() -> None:
    global _orphans
    _orphans = None


def own_children() -> set[int]:
    children: set[int] = set()
    for task in os.listdir("/proc/self/task"):
        try:
            children.update(int(pid) for pid in
                            _read_proc(f"/proc/self/task/{task}/children").split())
        except OSError:
            continue
    return children


def reap_orphans() -> int:
    """Reap every exited child that is not one of ours; returns how many.

    It peeks at the next exited child (WNOWAIT leaves it unreaped): an orphan
    is reaped and the next one looked at; none ends the sweep. One we spawned
    ends it too: its own waiter reaps it and asks for another sweep then. So a
    sweep costs a syscall per orphan, never a read of every child.
    """
    reaped = 0
    while True:
        try:
            found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:       # no children at all
            return reaped
        if found is None or found.si_pid in _spawned:
            return reaped
        with contextlib.suppress(ChildProcessError):
            os.waitpid(found.si_pid, os.WNOHANG)
        reaped += 1


def _read_proc(path: str) -> bytes:
    """A /proc file's whole content; OSError once its process is gone. Read with os.open
    and os.read rather than open(): a stop reads several for every process it stops, and
    a file object costs more than the read itself."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = chunk = os.read(fd, 1 << 16)
        while chunk:
            chunk = os.read(fd, 1 << 16)
            data += chunk
        return data
    finally:
        os.close(fd)


def find_processes(needles: Sequence[bytes], pgid: int | None = None) -> set[int]:
    """Live pids (all of /proc) in group ``pgid`` or whose environment holds every needle.

    A needle is ``b"KEY=value"``, ``b"KEY="`` for any value, or ``b"KEY=prefix*"``
    for any value that starts with ``prefix``.
    """
    wanted = [b"\0" + needle.removesuffix(b"*") if needle.endswith((b"=", b"*"))
              else b"\0" + needle + b"\0" for needle in needles]
    found: set[int] = set()
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        fields = stat_fields(pid)
        if fields is None or fields[0] == b"Z":
            continue
        try:
            if pgid is not None and int(fields[2]) == pgid:
                found.add(pid)
                continue
            environ = b"\0" + _read_proc(f"/proc/{pid}/environ") + b"\0"
            if wanted and all(needle in environ for needle in wanted):
                found.add(pid)
        except OSError:
            continue
    return found


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (state first), or None."""
    try:
        stat = _read_proc(f"/proc/{pid}/stat")
        fields = stat[stat.rindex(b")") + 2:].split()
    except (OSError, ValueError):
        return None
    return fields if len(fields) > 3 else None


def environ_has(pid: int, needle: bytes) -> bool:
    try:
        return b"\0" + needle + b"\0" in b"\0" + _read_proc(f"/proc/{pid}/environ") + b"\0"
    except OSError:
        return False


def descendants(pid: int) -> set[int]:
    """``pid`` and every process below it, walking /proc/PID/task/TID/children."""
    found, todo = set(), [pid]
    while todo:
        current = todo.pop()
        if current in found:
            continue
        found.add(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                children = _read_proc(f"/proc/{current}/task/{task}/children")
                todo += [int(child) for child in children.split()]
        except OSError:         # gone, or a task gone meanwhile
            continue
    return found


def session_of(pid: int) -> int | None:
    """The session id of ``pid``, or None when it is gone."""
    fields = stat_fields(pid)
    return int(fields[3]) if fields is not None else None


def spawn_tree(child: Child) -> set[int]:
    """Every live process of one spawn: the child, its descendants, and those of its
    descendants that were re-parented to us (the child or a parent between died, or
    they daemonized): found by its session or by PIKU_SPAWN_ID.

    It reads only these processes and our own children, not all of /proc, so a
    stop stays cheap however many processes run. The child's pid names its
    session (spawn starts one) until the last member of that session is gone.
    """
    needle = f"{SPAWN_ID}={child.spawn_id}".encode()
    members = descendants(child.pid) if not child.exited else set()
    for orphan in orphans():
        if session_of(orphan) == child.pid or environ_has(orphan, needle):
            members |= descendants(orphan)
    return members


class ProcessTree:
    """Processes held by pidfd, so a signal never hits a reused pid."""

    def __init__(self, pgid: int | None, pids: set[int]) -> None:
        self.pgid = pgid
        self.fds: dict[int, int] = {}
        self.hold(pids)

    def hold(self, pids: set[int]) -> None:
        """Take the live ones of ``pids`` not held yet into the tree."""
        for pid in pids - self.fds.keys():
            try:
                self.fds[pid] = os.pidfd_open(pid)
            except ProcessLookupError:
                continue

    def __len__(self) -> int:
        return len(self.fds)

    def signal(self, sig: int) -> None:
        """Signal the group and every member still running."""
        running = self._running()       # read before the group's signal ends some of them
        if self.pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)
        for fd in running:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, sig)

    def _running(self) -> list[int]:
        """The pidfds of the members that have not exited (a pidfd is readable once its
        process has): one poll instead of a signal each to processes already gone."""
        poller = select.poll()
        for fd in self.fds.values():
            poller.register(fd, select.POLLIN)
        exited = {fd for fd, _ in poller.poll(0)}
        return [fd for fd in self.fds.values() if fd not in exited]

    def alive(self) -> int:
        """How many members have not exited yet."""
        return len(self._running())

    async def wait(self, timeout: float) -> bool:
        """Wait until every member has exited; False when ``timeout`` passed first."""
        loop = asyncio.get_running_loop()
        pending = set(self.fds.values())
        if not pending:
            return True
        done = loop.create_future()
        watched = readers()     # the daemon's one epoll set: cheaper than a loop reader each

        def gone(fd: int) -> None:
            watched.remove(fd)
            pending.discard(fd)
            if not pending and not done.done():
                done.set_result(None)

        for fd in pending.copy():
            watched.add(fd, functools.partial(gone, fd))
        try:
            await asyncio.wait_for(done, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            for fd in pending:
                watched.remove(fd)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    async def stop(self, timeout: float, on_kill: KillNote, grace: float) -> Stopped:
        """SIGTERM the tree, SIGKILL those left after ``grace`` (calling ``on_kill`` with
        how many), then wait up to ``timeout`` more. They are all gone (or unkillable)
        when it returns."""
        self.signal(signal.SIGTERM)
        killed = 0
        if not await self.wait(grace):
            killed = self.alive()
            on_kill(killed)
            self.signal(signal.SIGKILL)
            await self.wait(timeout)
        return Stopped(len(self), killed)


async def terminate(pgid: int | None, pids: set[int], timeout: float,
                    on_kill: KillNote = lambda left: None) -> Stopped:
    """SIGTERM a process group and ``pids``, SIGKILL after ``timeout`` (ProcessTree.stop)."""
    tree = ProcessTree(pgid, pids)
    try:
        return await tree.stop(timeout, on_kill, timeout)
    finally:
        tree.close()


async def stop_leftovers(root: str, timeout: float, app: str | None = None,
                         keep: Collection[str] = ()) -> int:
    """Stop the app processes a previous daemon of ``root`` left running (kill -9 of pikud),
    or, with ``app``, every process of that app that no slot tracks (stop, destroy).
    Processes of the spawns named in ``keep`` (PIKU_SPAWN_ID) are being adopted: spared.

    They may have been re-parented elsewhere, so these are the places that scan all of /proc.
    """
    needles = (f"{MARKER}={app + ':' if app else ''}*".encode(), f"PIKU_ROOT={root}".encode())
    found = await asyncio.to_thread(find_processes, needles)    # all of /proc: off the loop
    kept = [f"{SPAWN_ID}={spawn_id}".encode() for spawn_id in keep]
    found = {pid for pid in found if not any(environ_has(pid, needle) for needle in kept)}
    if found and app is None:       # an app's own are noted by the App
        log.warning("stopping %d processes left running by a previous pikud", len(found))
    return (await terminate(None, found, timeout)).found


async def stop_child(child: Child, timeout: float, on_kill: KillNote = lambda left: None,
                     *, leader_first: bool = False) -> tuple[ExitInfo, Stopped]:
    """Stop ``child`` and every descendant of its spawn; returns how the child ended and
    how the stop went. The child may have exited already: then this stops what it left.

    ``leader_first``: the child is one program (not a shell running several), so it
    alone gets the first SIGTERM: a server with workers (granian, gunicorn) stops them
    itself, and hangs when they are signalled beside it. What is below it is held before
    that signal: once it has exited, what it started is re-parented to us, and a process
    that left its session and its environment (setsid, env -i) is then known by nothing
    else. Its orphans are looked for again once it has exited (or ``timeout`` passed):
    those it started while it stopped.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    alone = leader_first and not child.exited
    held = spawn_tree(child)
    # A program alone is watched by its Child: most often the tree holds nothing else.
    tree = ProcessTree(child.pid, held - {child.pid} if alone else held)
    try:
        if alone:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(child.pidfd, signal.SIGTERM)
            await asyncio.wait([child.ended], timeout=timeout)
            tree.hold(spawn_tree(child))       # the program too, if it has not exited
        stopped = await tree.stop(timeout, on_kill, max(deadline - loop.time(), 0.1))
    finally:
        tree.close()
    gone = alone and child.exited          # not in the tree, but stopped here
    return await child.wait(), Stopped(stopped.found + int(gone), stopped.killed)
