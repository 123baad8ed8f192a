"""One loop reader for the descriptors every running process keeps: its pidfd and its
output pipe. Stdlib only.

Design notes: each ``loop.add_reader`` costs the loop a poll handle and its
wrappers (about 540 bytes under uvloop), and a supervised process keeps two
for as long as it runs. Here they are kept in one epoll set that the loop
watches as a single descriptor: an entry in a dict each. The set is level
triggered, so a reader that takes part of what is waiting is called again.
A descriptor closed and reused while its readiness was being dispatched is not
handed to the new owner's callback for the old one's event (see ``_ready``). A
callback that raises is reported through the loop's exception handler, as a
reader of the loop's own would be, and the others in the same batch still run:
one that raised at every pass would otherwise starve the descriptors after it.
"""

from __future__ import annotations

import asyncio
import select
import weakref
from collections.abc import Callable

Callback = Callable[[], None]


class Readers:
    """Descriptors watched for reading through one epoll set, on one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callback] = {}
        loop.add_reader(self._epoll.fileno(), self._ready)

    def add(self, fd: int, callback: Callback) -> None:
        """Call ``callback`` whenever ``fd`` is readable, until ``remove``."""
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed)."""
        if self._callbacks.pop(fd, None) is not None:
            self._epoll.unregister(fd)

    def _ready(self) -> None:
        # Each callback is taken before any runs: one that closes a descriptor whose
        # number a later callback reuses must not make the new one run on stale news.
        ready = [(fd, self._callbacks.get(fd)) for fd, _ in self._epoll.poll(0)]
        for fd, callback in ready:
            if callback is not None and self._callbacks.get(fd) is callback:
                try:
                    callback()
                except Exception as exc:    # reported as the loop reports a reader's,
                    self._loop.call_exception_handler({     # and the others still run
                        "message": f"exception in the reader of descriptor {fd}",
                        "exception": exc})


_loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Readers] = (
    weakref.WeakKeyDictionary())


def readers() -> Readers:
    """The running loop's readers, made at the first use."""
    loop = asyncio.get_running_loop()
    found = _loops.get(loop)
    if found is None:
        found = _loops[loop] = Readers(loop)
    return found
