"""``Flag``, a small event, and ``first_of``: wait for the first of several. Stdlib only.

``asyncio.wait(..., return_when=FIRST_COMPLETED)`` takes futures only, leaves
the others pending and does not say which one it was. A process slot waits
like this in three places (its child's exit or a stop or a suspend; a
connection or a stop while asleep; a back-off cut short), so the pattern is
written once here.
"""

# Design notes:
# - Every supervised process holds five events and parks on two of them for
#   as long as it runs. An asyncio.Event allocates the deque of its waiters
#   when it is made (860 bytes in all); a Flag is 60 bytes and makes a future
#   only for a waiter. Waiting on a Flag or a Future here takes no Task (an
#   Event's wait() is a coroutine that would need one: a Task and its frame,
#   about 1 KiB), and first_of waits on one future with a callback on each
#   instead of asyncio.wait's machinery. Together that was 6 KiB of the 21 KiB
#   the daemon grew by per process (bench/run, 200 processes).

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class Flag:
    """``asyncio.Event``'s ``set``/``clear``/``is_set``/``wait``, at a tenth of its size."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set it and wake every waiter."""
        if not self._set:
            self._set = True
            for waiter in self._waiters:
                if not waiter.done():
                    waiter.set_result(None)
            self._waiters.clear()

    def clear(self) -> None:
        self._set = False

    def waiter(self) -> asyncio.Future[None]:
        """A future done once the flag is set (at once if it is). Cancel it to stop
        waiting: a cancelled waiter is dropped at the next one's making."""
        waiter = asyncio.get_running_loop().create_future()
        if self._set:
            waiter.set_result(None)
        else:
            self._waiters = [w for w in self._waiters if not w.done()]
            self._waiters.append(waiter)
        return waiter

    async def wait(self) -> None:
        """Until the flag is set."""
        await self.waiter()


Waitable = Flag | Awaitable[Any]


async def first_of(*waits: Waitable) -> Waitable:
    """Wait until one of ``waits`` is done (a Flag set, an awaitable finished); return it.

    What this function wraps (a Flag's waiter, a coroutine) is cancelled before
    it returns; a Future or Task passed in is only watched, never cancelled.
    When several are done at once, the first in argument order is returned.
    A time limit is one more awaitable: ``first_of(stop, asyncio.sleep(delay))``.
    """
    if not waits:
        raise ValueError("first_of() needs something to wait for")
    futures = [w.waiter() if isinstance(w, Flag) else asyncio.ensure_future(w) for w in waits]
    first = asyncio.get_running_loop().create_future()

    def finished(future: asyncio.Future[Any]) -> None:
        if not first.done():
            first.set_result(None)

    for future in futures:
        future.add_done_callback(finished)
    try:
        await first
        return next(wait for wait, future in zip(waits, futures, strict=True) if future.done())
    finally:
        for wait, future in zip(waits, futures, strict=True):
            future.remove_done_callback(finished)
            if future is not wait:
                future.cancel()
