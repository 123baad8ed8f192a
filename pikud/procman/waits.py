"""``first_of``: wait for the first of several events or awaitables. Stdlib only.

``asyncio.wait(..., return_when=FIRST_COMPLETED)`` takes futures only, leaves
the others pending and does not say which one it was. A process slot waits
like this in three places (its child's exit or a stop or a suspend; a
connection or a stop while asleep; a back-off cut short), so the pattern is
written once here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

Waitable = asyncio.Event | Awaitable[Any]


async def first_of(*waits: Waitable) -> Waitable:
    """Wait until one of ``waits`` is done (an Event set, an awaitable finished); return it.

    What this function wraps (an Event's wait, a coroutine) is cancelled before
    it returns; a Future or Task passed in is only watched, never cancelled.
    When several are done at once, the first in argument order is returned.
    A time limit is one more awaitable: ``first_of(stop, asyncio.sleep(delay))``.
    """
    futures = [asyncio.ensure_future(w.wait() if isinstance(w, asyncio.Event) else w)
               for w in waits]
    try:
        done, _ = await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait, future in zip(waits, futures, strict=True):
            if future is not wait:
                future.cancel()
    return next(wait for wait, future in zip(waits, futures, strict=True) if future in done)
