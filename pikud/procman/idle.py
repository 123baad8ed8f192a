"""Scale to zero: put an app's web slots to sleep after a quiet spell (PIKU_IDLE_TIMEOUT).

Idle means that no connection to any of the app's daemon-owned sockets has
been open, or waiting to be accepted, for the whole timeout. The kernel
knows that better than any counter the daemon could keep, since the app's
server accepts its connections itself: ``/proc/net/tcp`` lists every socket
on those ports, with the accept queue of the listening one, and
``/proc/net/unix`` every unix socket, where a connection waiting to be
accepted (state 02) and an accepted one (03) carry the listener's path
(measured on Linux 6.x; the listener itself is state 01). Neither nginx's
sites nor the built-in router keep idle connections to an app open, so an
app with no requests has none.

``IdleWatch`` looks every ``interval`` seconds while the slots run, and not
at all while they sleep: a sleeping slot wakes on its own when a connection
arrives (``ManagedProcess.suspend``), and the watch is told with ``wake()``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

from pikud.procman.process import ManagedProcess
from pikud.procman.sockets import Address
from pikud.procman.state import ALIVE, ProcessState

log = logging.getLogger(__name__)

# A slot on its way up or down; a quiet spell counts only once none is. An
# IDLE slot beside running ones (an app scaled up while asleep) counts as settled.
CHANGING = frozenset({ProcessState.STARTING, ProcessState.STOPPING})

TCP_TABLE = Path("/proc/net/tcp")       # the sockets listen on 127.0.0.1 (IPv4 only)
LISTEN, TIME_WAIT, CLOSE = "0A", "06", "07"
UNIX_TABLE = Path("/proc/net/unix")
UNCONNECTED = "01"              # a unix socket's state: a listener, or nothing connected


def busy_ports(table: str, ports: Collection[int]) -> set[int]:
    """The ``ports`` with traffic in one /proc/net/tcp text.

    A port is busy when a connection to it is open (any state but
    TIME_WAIT and CLOSE) or its listening socket has connections waiting
    to be accepted (a LISTEN line's rx_queue is its accept queue).
    """
    found: set[int] = set()
    for line in table.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 5 or ":" not in fields[1]:
            continue
        port = int(fields[1].rsplit(":", 1)[1], 16)
        if port not in ports:
            continue
        state, queued = fields[3], int(fields[4].split(":")[1], 16)
        if (state == LISTEN and queued) or state not in (LISTEN, TIME_WAIT, CLOSE):
            found.add(port)
    return found


def busy_sockets(table: str, paths: Collection[str]) -> set[str]:
    """The unix socket ``paths`` with traffic in one /proc/net/unix text: any line that
    names one in another state than unconnected (a connection queued or accepted)."""
    found: set[str] = set()
    for line in table.splitlines()[1:]:
        fields = line.split(None, 7)            # the path, last, may hold spaces
        if len(fields) == 8 and fields[7] in paths and fields[5] != UNCONNECTED:
            found.add(fields[7])
    return found


def has_traffic(addresses: Collection[Address], tcp: Path = TCP_TABLE,
                unix: Path = UNIX_TABLE) -> bool:
    """Whether any of ``addresses`` (ports, socket paths) has a connection open or
    waiting to be accepted."""
    ports = {address for address in addresses if isinstance(address, int)}
    paths = {address for address in addresses if isinstance(address, str)}
    try:
        return bool(ports and busy_ports(tcp.read_text(), ports)
                    or paths and busy_sockets(unix.read_text(), paths))
    except OSError:
        return True                     # cannot tell: never put an app to sleep blindly


def check_interval(timeout: float) -> float:
    """How often a running app is looked at: a quarter of its timeout, within 0.25-5 s."""
    return min(max(timeout / 4, 0.25), 5.0)


class IdleWatch:
    """Suspends one app's web slots once none of their sockets had traffic for ``timeout``.

    ``slots()`` gives the app's current web slots (they change with every
    generation); ``suspend()`` puts them to sleep under the app's lock, and
    may decline (returning False) while another action holds it.
    """

    def __init__(self, name: str, timeout: float,
                 slots: Callable[[], list[ManagedProcess]],
                 suspend: Callable[[], Awaitable[bool]]) -> None:
        self.name, self.timeout = name, timeout
        self._slots, self._suspend = slots, suspend
        self._woken = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"idle watch of {name}")
        self._task.add_done_callback(self._ended)

    def wake(self) -> None:
        """A slot is starting: count the quiet spell from now, and look again."""
        self._woken.set()

    def close(self) -> None:
        self._task.cancel()

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A watch only ends by close(); anything else is a bug to log, not to lose."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: the idle watch failed; the app no longer scales to zero",
                      self.name, exc_info=task.exception())

    async def _run(self) -> None:
        interval = check_interval(self.timeout)
        quiet_since = time.monotonic()
        while True:
            slots = self._slots()
            if not any(slot.state in ALIVE for slot in slots):      # asleep, or stopped
                self._woken.clear()
                await self._woken.wait()
                quiet_since = time.monotonic()
                continue
            addresses = {address for slot in slots
                         if (address := slot.spec.listen_address) is not None}
            settling = any(slot.state in CHANGING for slot in slots)
            # /proc/net/tcp and unix hold every socket of the machine: read them off the loop
            if self._woken.is_set() or settling or await asyncio.to_thread(has_traffic,
                                                                            addresses):
                self._woken.clear()
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= self.timeout and await self._suspend():
                log.info("%s: no traffic for %gs; its web processes sleep until the next "
                         "connection", self.name, self.timeout)
                quiet_since = time.monotonic()
            await asyncio.sleep(interval)
