"""cron.timer.DueTimes: the heap of next times and its one loop timer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from pikud.cron.timer import MAX_SLEEP, DueTimes

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def never() -> None:
    raise AssertionError("no wake expected")


def drain(times: DueTimes[str], now: datetime) -> list[str]:
    return list(iter(lambda: times.pop_due(now), None))


def test_due_keys_come_in_time_order_and_only_once_due() -> None:
    times: DueTimes[str] = DueTimes(lambda: T0, never)
    for key, minutes in [("c", 3), ("a", 1), ("b", 2), ("later", 10)]:
        times.set(key, T0 + timedelta(minutes=minutes))
    assert drain(times, T0) == []
    assert drain(times, T0 + timedelta(minutes=3)) == ["a", "b", "c"]
    assert drain(times, T0 + timedelta(days=1)) == ["later"]


def test_a_new_time_replaces_the_old_and_none_drops_it() -> None:
    times: DueTimes[str] = DueTimes(lambda: T0, never)
    times.set("moved", T0 + timedelta(minutes=1))
    times.set("dropped", T0 + timedelta(minutes=1))
    times.set("moved", T0 + timedelta(minutes=5))
    times.set("dropped", None)
    assert drain(times, T0 + timedelta(minutes=4)) == []
    assert drain(times, T0 + timedelta(minutes=5)) == ["moved"]


async def test_many_reschedules_keep_one_entry_each() -> None:
    times: DueTimes[str] = DueTimes(lambda: T0, never)
    for round_ in range(50):
        for key in range(10):
            times.set(str(key), T0 + timedelta(minutes=round_ + key))
        times.arm()
    times.cancel()
    assert len(times._heap) <= 2 * 10 + 64 + 10         # stale entries are dropped at arm()
    assert drain(times, T0 + timedelta(days=1)) == [str(key) for key in range(10)]


async def test_arm_wakes_when_the_first_time_is_due() -> None:
    woke = asyncio.Event()
    now = datetime.now(UTC)
    times: DueTimes[str] = DueTimes(lambda: datetime.now(UTC), woke.set)
    times.set("soon", now + timedelta(seconds=0.05))
    times.set("later", now + timedelta(hours=5))
    times.arm()
    async with asyncio.timeout(5):
        await woke.wait()
    assert drain(times, datetime.now(UTC)) == ["soon"]
    times.arm()
    assert times._timer is not None and times._timer.when() - asyncio.get_running_loop().time() \
        <= MAX_SLEEP
    times.cancel()


async def test_fell_back_measures_a_backward_jump_since_arm() -> None:
    shift = timedelta(0)
    times: DueTimes[str] = DueTimes(lambda: datetime.now(UTC) + shift, never)
    assert times.fell_back(T0) == 0.0                   # never armed
    times.set("x", datetime.now(UTC) + timedelta(hours=2))
    times.arm()
    shift = timedelta(minutes=-10)
    assert 590 < times.fell_back(datetime.now(UTC) + shift) < 610
    times.cancel()
