"""ManagedProcess in-process: real children, no daemon; each transition proven by its event."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from pikud.procman.state import ProcessState
from tests.integration.inprocess import QUICK, Harness, gone

S = ProcessState
NAME = "t:worker.1"
IGNORES_TERM = (f"{sys.executable} -c 'import signal, time; "
                "signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "print(\"ready\", flush=True); time.sleep(300)'")


async def test_a_crash_loop_backs_off_doubling_then_is_fatal_and_a_start_retries_it(
        harness: Harness) -> None:
    proc = harness.process(harness.spec("echo failing; exit 1"))
    proc.start()
    fatal = await harness.events.nth(NAME, "FATAL")
    assert fatal == (f"gave up: {NAME} entered FATAL state, too many start retries too "
                     "quickly (exit status 1); retrying in 600s")
    events = harness.events.of(NAME)
    assert [event for event, _ in events] == ["STARTING", "BACKOFF"] * 3 + ["STARTING", "FATAL"]
    backoffs = [phrase for event, phrase in events if event == "BACKOFF"]
    assert backoffs == [f"backoff: {NAME} in {delay} (attempt {n}, exit status 1)"
                        for n, delay in ((1, "0.1s"), (2, "0.2s"), (3, "0.4s"))]
    assert all(phrase.startswith(f"spawned: {NAME} with pid ")
               for event, phrase in events if event == "STARTING")
    assert proc.state is S.FATAL and proc.child is None and proc.snapshot()["pid"] is None
    assert proc.last_exit == "exit status 1" and proc.restarts == 4

    proc.start()                            # long before the 600 s cool-off
    await harness.events.nth(NAME, "STARTING", 5, deadline=5)
    await harness.events.nth(NAME, "BACKOFF", 4)        # the count of failures began again
    assert harness.events.of(NAME)[-1][1].endswith("(attempt 1, exit status 1)")


async def test_an_exit_after_a_stable_run_respawns_at_once(harness: Harness) -> None:
    proc = harness.process(harness.spec("sleep 0.4; exit 3"))
    proc.start()
    assert (await harness.events.nth(NAME, "RUNNING")) == (
        f"success: {NAME} entered RUNNING state, process has stayed up for > 0.2s")
    first = proc.child.pid if proc.child else None
    assert (await harness.events.nth(NAME, "EXITED")) == (
        f"exited: {NAME} (exit status 3; not expected)")
    await harness.events.nth(NAME, "STARTING", 2)
    assert proc.restarts == 1 and proc.child is not None and proc.child.pid != first
    assert first is not None and gone(first)
    assert "BACKOFF" not in [event for event, _ in harness.events.of(NAME)]


@pytest.mark.parametrize(("retries", "waiting", "phrase"), [
    (3, "BACKOFF", f"backoff: {NAME} in 300s (attempt 1, exit status 1)"),
    (0, "FATAL", f"gave up: {NAME} entered FATAL state, too many start retries too quickly "
                 "(exit status 1); retrying in 600s"),
])
async def test_a_stop_while_waiting_to_respawn_ends_at_once(
        harness: Harness, retries: int, waiting: str, phrase: str) -> None:
    policy = replace(QUICK, backoff_base=300, backoff_max=300, start_retries=retries)
    proc = harness.process(harness.spec("exit 1", policy=policy))
    proc.start()
    assert (await harness.events.nth(NAME, waiting)) == phrase
    started = time.monotonic()
    async with asyncio.timeout(2):
        await proc.stop()
    assert time.monotonic() - started < 1.0
    assert proc.state is S.STOPPED
    assert harness.events.of(NAME)[-1] == ("STOPPED", f"stopped: {NAME} (was not running)")
    assert [event for event, _ in harness.events.of(NAME)].count("STARTING") == 1


@pytest.mark.parametrize(("command", "main_ended"), [
    ("exec " + IGNORES_TERM, "killed by SIGKILL"),      # the program is the slot's process
    (IGNORES_TERM + "; echo done", "killed by SIGTERM"),    # a shell that waits for it
])
async def test_a_child_ignoring_sigterm_gets_sigkill_after_the_stop_timeout(
        harness: Harness, command: str, main_ended: str) -> None:
    proc = harness.process(harness.spec(command, stop_timeout=0.3))
    proc.start()
    await harness.events.line("worker.1", "ready")     # its SIGTERM handler is in place
    pid = proc.child.pid if proc.child else 0
    started = time.monotonic()
    await proc.stop()
    assert time.monotonic() - started >= 0.3
    assert gone(pid)
    assert harness.events.of(NAME)[-3:] == [
        ("STOPPING", f"stopping: {NAME} (pid {pid}, stop requested)"),
        ("killed", f"killed: {NAME} did not stop within 0.3s; sent SIGKILL to 1 process"),
        ("STOPPED", f"stopped: {NAME} ({main_ended}; SIGKILL needed for 1 process)"),
    ]


async def test_a_running_slot_waits_on_one_task(harness: Harness) -> None:
    """A running slot parks its supervision task on its child's exit and its stop and
    suspend flags, and nothing more: no task per wait (hundreds of slots park so)."""
    proc = harness.process(harness.spec("sleep 300"))
    proc.start()
    await harness.events.nth(NAME, "RUNNING")
    assert asyncio.all_tasks() - {asyncio.current_task()} == {proc._task}
    proc.suspend()                  # without a listener: ignored, nothing new waits
    async with asyncio.timeout(2):
        await proc.stop()
    assert proc.state is S.STOPPED


async def test_a_running_slot_holds_one_frame_and_no_popen(harness: Harness) -> None:
    """What a running slot holds for as long as its process runs: its task's one frame
    (the supervision loop) parked on one future, and no Popen (the Child reads the exit
    through its pidfd)."""
    proc = harness.process(harness.spec("sleep 300"))
    proc.start()
    await harness.events.nth(NAME, "RUNNING")
    assert proc._task is not None and proc.child is not None
    awaited, frames = proc._task.get_coro().cr_await, 1
    while asyncio.iscoroutine(awaited):
        frames, awaited = frames + 1, awaited.cr_await
    assert frames == 1
    gc.collect()
    pid = proc.child.pid
    assert not [o for o in gc.get_objects() if isinstance(o, subprocess.Popen) and o.pid == pid]
    async with asyncio.timeout(5):
        await proc.stop()
    assert proc.state is S.STOPPED and proc.last_exit == "killed by SIGTERM"


async def test_a_child_that_honours_sigterm_stops_without_sigkill(harness: Harness) -> None:
    proc = harness.process(harness.spec("sleep 300", stop_timeout=5))
    proc.start()
    await harness.events.nth(NAME, "RUNNING")
    pid = proc.child.pid if proc.child else 0
    async with asyncio.timeout(2):
        await proc.stop()
    assert gone(pid)
    assert harness.events.of(NAME)[-1] == ("STOPPED", f"stopped: {NAME} (killed by SIGTERM)")
    assert "killed" not in [event for event, _ in harness.events.of(NAME)]


async def test_a_start_that_withdraws_a_stop_before_the_slot_wakes_restarts_it(
        harness: Harness) -> None:
    """A start right behind a stop (a retry while a stop is under way), before the slot
    has woken for the stop: the process is stopped as asked and the next one spawned.
    The withdrawn stop is never taken for a suspend (``idle``, IDLE), which a slot
    without a socket cannot even be in."""
    proc = harness.process(harness.spec("sleep 300"))
    proc.start()
    await harness.events.nth(NAME, "RUNNING")
    pid = proc.child.pid if proc.child else 0
    stopping = asyncio.ensure_future(proc.stop())
    await asyncio.sleep(0)      # one turn: the stop is asked, the slot not woken yet
    assert proc.state is S.RUNNING
    proc.start()
    await harness.events.nth(NAME, "STARTING", 2)
    assert harness.events.of(NAME)[2:4] == [
        ("STOPPING", f"stopping: {NAME} (pid {pid}, stop requested)"),
        ("STOPPED", f"stopped: {NAME} (killed by SIGTERM)"),
    ]
    async with asyncio.timeout(5):
        await proc.stop()
        await stopping
    assert proc.state is S.STOPPED and gone(pid)
