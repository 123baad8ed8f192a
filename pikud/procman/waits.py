"""``Flag``, a small event, and ``any_of``/``first_of``: wait for the first of several.
Stdlib only.

``asyncio.wait(..., return_when=FIRST_COMPLETED)`` takes futures only, leaves
the others pending and does not say which one it was. A process slot waits
like this in three places (its child's exit or a stop or a suspend; a
connection or a stop while asleep; a back-off cut short), so the pattern is
written once here: ``any_of`` for Flags and futures, ``first_of`` on top of it
for any awaitable (a sleep as a time limit).
"""

# Design notes:
# - Every supervised process holds five events and parks on two of them for
#   as long as it runs. An asyncio.Event allocates the deque of its waiters
#   when it is made (860 bytes in all); a Flag is 48 bytes and makes its list
#   of waiters only for a waiter. Waiting on a Flag or a Future here takes no
#   Task (an Event's wait() is a coroutine that would need one: a Task and its
#   frame, about 1 KiB), and first_of waits on one future, which each Flag
#   sets itself and each future sets from a callback, instead of asyncio.wait's
#   machinery. Together that was 6.6 KiB of the 21 KiB the daemon grew by per
#   process (bench/run, 200 processes).

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from functools import partial
from typing import Any


class Flag:
    """``asyncio.Event``'s ``set``/``clear``/``is_set``/``wait``, at a tenth of its size."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[Any]] | None = None     # made for the first waiter

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        """Set it and wake every waiter (its result is this flag)."""
        if not self._set:
            self._set = True
            waiters, self._waiters = self._waiters, None
            for waiter in waiters or ():
                if not waiter.done():
                    waiter.set_result(self)

    def clear(self) -> None:
        self._set = False

    def waiter(self) -> asyncio.Future[Any]:
        """A future done once the flag is set (at once if it is). Cancel it to stop
        waiting: a cancelled waiter is dropped at the next one's making."""
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._wake(waiter)
        return waiter

    def _wake(self, waiter: asyncio.Future[Any]) -> None:
        """Set ``waiter``'s result to this flag once it is set (at once if it is)."""
        if self._set:
            if not waiter.done():
                waiter.set_result(self)
        else:
            self._waiters = [w for w in self._waiters or () if not w.done()]
            self._waiters.append(waiter)

    async def wait(self) -> None:
        """Until the flag is set."""
        await self.waiter()


Waitable = Flag | Awaitable[Any]


def any_of(*waits: Flag | asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A future done once one of ``waits`` is: a Flag set (its result is that Flag) or a
    future done (None). Cancel it to stop waiting; a future among ``waits`` is only
    watched, never cancelled.

    A function, not a coroutine: a running slot waits on it for as long as its
    process runs, and a coroutine would hold a frame per process meanwhile. Once
    it is done, a Flag drops it at its next waiter or set, and a future's
    callback into it does nothing.
    """
    if not waits:
        raise ValueError("any_of() needs something to wait for")
    first: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    settle = partial(_settle, first)
    for wait in waits:
        if isinstance(wait, Flag):
            wait._wake(first)       # no future or callback of its own per Flag
        else:
            wait.add_done_callback(settle)
    return first


def _settle(first: asyncio.Future[Any], done: asyncio.Future[Any]) -> None:
    if not first.done():
        first.set_result(None)


async def first_of(*waits: Waitable) -> Waitable:
    """Wait until one of ``waits`` is done (a Flag set, an awaitable finished); return it.

    What this function wraps (a coroutine) is cancelled before it returns; a
    Future or Task passed in is only watched, never cancelled, through a shield
    whose cancelling takes its callback off again (any_of's would stay on it
    until it is done: one per call on a future that lives long). When several
    are done at once, the first in argument order is returned. A time limit
    is one more awaitable: ``first_of(stop, asyncio.sleep(delay))``.
    """
    if not waits:
        raise ValueError("first_of() needs something to wait for")
    watched = [w if isinstance(w, Flag) else
               asyncio.shield(w) if asyncio.isfuture(w) else asyncio.ensure_future(w)
               for w in waits]
    try:
        fired = await any_of(*watched)      # the Flag that did it (None: a future did)
        return next((wait for wait, future in zip(waits, watched, strict=True)
                     if (future.is_set() if isinstance(future, Flag) else future.done())),
                    fired)
    finally:
        for wait, future in zip(waits, watched, strict=True):
            if future is not wait:
                assert isinstance(future, asyncio.Future)
                future.cancel()
