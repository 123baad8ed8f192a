"""The next due time of every cron job, behind one loop timer.

``DueTimes`` keeps each job's next time and wakes its owner when the earliest
one is due; what a due job then does (run it, skip it, report it missed) is
``scheduler.py``'s. Apart from it because the timing has its own invariants:
one timer however many jobs, and a wall clock that may jump.
"""

# Design notes:
# - One ``loop.call_later`` timer for the earliest due time, found in a heap
#   with lazy deletion (a key's entry is current while it is the one ``_live``
#   names; setting a new time leaves the old entry stale), so 1,000 idle jobs
#   cost nothing between firings.
# - The loop's timers run on the monotonic clock, the schedule on the wall
#   clock. Every wake re-reads the wall clock; a time not yet due is re-armed,
#   and no sleep is longer than an hour, so a clock change is seen within one.
#   ``fell_back()`` measures a backward change against the monotonic clock.

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Hashable
from datetime import datetime
from typing import Generic, TypeVar

MAX_SLEEP = 3600.0      # the longest single sleep, so a wall-clock change is seen within it
TIMER_SLACK = 0.002     # fraction of a long sleep to wake early by

K = TypeVar("K", bound=Hashable)
Clock = Callable[[], datetime]


class DueTimes(Generic[K]):
    """Keys (the scheduler's jobs) and their next times; calls ``wake`` when the first is due.

    Times are aware datetimes; ``clock`` gives the wall clock's now.
    """

    def __init__(self, clock: Clock, wake: Callable[[], None]) -> None:
        self._clock, self._wake = clock, wake
        self._heap: list[tuple[float, int, K]] = []     # (due timestamp, sequence, key)
        self._live: dict[K, int] = {}                   # key -> sequence of its current entry
        self._seq = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._armed: tuple[float, float] | None = None  # (loop time, wall time) when armed

    def set(self, key: K, due: datetime | None) -> None:
        """``key`` is next due at ``due``; None: at no time. Takes effect at ``arm()``."""
        self._live.pop(key, None)
        if due is not None:
            seq = self._live[key] = next(self._seq)
            heapq.heappush(self._heap, (due.timestamp(), seq, key))

    def pop_due(self, now: datetime) -> K | None:
        """The key with the earliest time if that is not after ``now``, removed; else None."""
        self._drop_stale()
        if not self._heap or self._heap[0][0] > now.timestamp():
            return None
        _, _, key = heapq.heappop(self._heap)
        del self._live[key]
        return key

    def arm(self) -> None:
        """Call ``wake`` when the earliest time is due, or in MAX_SLEEP if that is sooner."""
        self.cancel()
        if len(self._heap) > 2 * len(self._live) + 64:     # drop stale entries left by set()
            self._heap = [item for item in self._heap if self._current(item)]
            heapq.heapify(self._heap)
        self._drop_stale()
        if not self._heap:
            self._armed = None
            return
        loop = asyncio.get_running_loop()
        now = self._clock().timestamp()
        self._armed = (loop.time(), now)
        delay = min(max(self._heap[0][0] - now, 0.0), MAX_SLEEP)
        # The kernel lets a long sleep end up to 0.1% late (timer slack, 60 ms a minute):
        # wake that much early; the wake re-arms a short timer for the rest.
        delay -= min(delay * TIMER_SLACK, 0.1) if delay > 1.0 else 0.0
        self._timer = loop.call_later(delay, self._wake)

    def cancel(self) -> None:
        """No wake until the next ``arm()`` (a no-op when the timer itself called)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def fell_back(self, now: datetime) -> float:
        """Seconds the wall clock, at ``now``, is behind where it should be since the last arm."""
        if self._armed is None:
            return 0.0
        armed_at, wall = self._armed
        return wall + (asyncio.get_running_loop().time() - armed_at) - now.timestamp()

    def _current(self, item: tuple[float, int, K]) -> bool:
        return self._live.get(item[2]) == item[1]

    def _drop_stale(self) -> None:
        while self._heap and not self._current(self._heap[0]):
            heapq.heappop(self._heap)
