"""procman.waits.first_of: the first of several events or awaitables, the rest cancelled."""

from __future__ import annotations

import asyncio

import pytest

from pikud.procman.waits import Flag, any_of, first_of

DEADLINE = 5.0


async def no_other_task() -> None:
    """Until every other task has ended, each of them cancelled (a cancel lands a turn later)."""
    others = asyncio.all_tasks() - {asyncio.current_task()}
    if others:
        _, pending = await asyncio.wait(others, timeout=DEADLINE)
        assert not pending
    assert all(task.cancelled() for task in others)


async def test_the_event_set_first_wins_and_the_other_waits_are_cancelled() -> None:
    stop, kick = Flag(), Flag()
    asyncio.get_running_loop().call_later(0.01, kick.set)
    async with asyncio.timeout(DEADLINE):
        assert await first_of(stop, kick) is kick
    await no_other_task()


async def test_an_awaitable_can_win() -> None:
    stop = Flag()
    finished = asyncio.sleep(0.01)
    async with asyncio.timeout(DEADLINE):
        assert await first_of(finished, stop) is finished
    await no_other_task()


async def test_a_sleep_is_a_time_limit() -> None:
    limit = asyncio.sleep(0.01)
    async with asyncio.timeout(DEADLINE):
        assert await first_of(Flag(), limit) is limit
    await no_other_task()


async def test_a_task_passed_in_is_watched_not_cancelled() -> None:
    gate = Flag()
    task = asyncio.create_task(gate.wait())
    stop = Flag()
    stop.set()
    async with asyncio.timeout(DEADLINE):
        assert await first_of(task, stop) is stop
        assert not task.cancelled()
        gate.set()
        await task


async def test_of_several_done_the_first_argument_wins() -> None:
    one, two = Flag(), Flag()
    one.set()
    two.set()
    async with asyncio.timeout(DEADLINE):
        assert await first_of(two, one) is two


async def test_cancelling_the_waiter_cancels_its_waits() -> None:
    waiter = asyncio.create_task(first_of(Flag(), asyncio.sleep(3600)))
    await asyncio.sleep(0)
    waiter.cancel()
    async with asyncio.timeout(DEADLINE):
        await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    await no_other_task()


async def test_nothing_to_wait_for_is_an_error() -> None:
    with pytest.raises(ValueError, match="needs something to wait for"):
        await first_of()


async def test_a_flag_keeps_no_cancelled_waiter() -> None:
    """A running slot waits on the same flags round after round (a suspend, a stop): each
    round's waiter is dropped once cancelled, so a flag holds at most the current one."""
    flag, other = Flag(), Flag()
    for _ in range(50):
        other.set()
        assert await first_of(flag, other) is other
        other.clear()
    assert len(flag._waiters) <= 1


async def test_any_of_is_the_flag_that_was_set_or_none_for_a_future() -> None:
    stop, suspend = Flag(), Flag()
    exited = asyncio.get_running_loop().create_future()
    waiting = any_of(exited, stop, suspend)
    suspend.set()
    async with asyncio.timeout(DEADLINE):
        assert await waiting is suspend
        later = any_of(exited, stop)
        exited.set_result(3)
        assert await later is None
    assert exited.result() == 3                 # watched, not changed


async def test_any_of_cancelled_leaves_the_future_it_watched_alone() -> None:
    stop, exited = Flag(), asyncio.get_running_loop().create_future()
    waiting = any_of(exited, stop)
    waiting.cancel()
    stop.set()                  # wakes nothing, and raises nothing, once cancelled
    exited.set_result(None)
    await asyncio.sleep(0)
    assert waiting.cancelled() and exited.result() is None


def test_a_flag_makes_its_list_of_waiters_only_for_a_waiter() -> None:
    """A slot holds five flags all its life, and most are never waited on."""
    assert Flag()._waiters is None


async def test_a_future_passed_in_collects_no_callback_per_wait() -> None:
    """A long-lived future (a connection's task, say) waited on round after round, with a
    flag that wins each time, keeps no callback of a wait that is over."""
    running = asyncio.get_running_loop().create_future()
    stop = Flag()
    stop.set()
    for _ in range(50):
        assert await first_of(running, stop) is stop
    await asyncio.sleep(0)          # the last round's cancellation lands
    assert not running._callbacks
    assert not running.done()
