"""ProcessGroup in-process: apply (start, stop, rolling replace) and switch (a deploy),
including the switches that fail, with real children and no daemon."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import Mapping
from dataclasses import replace

import pytest

from pikud.errors import DeployError
from pikud.procman import children
from pikud.procman.group import ProcessGroup
from pikud.procman.plan import Plan
from pikud.procman.process import ProcessSpec
from pikud.procman.state import ProcessState
from tests.integration.inprocess import QUICK, Harness, gone

S = ProcessState
W1, W2 = "t:worker.1", "t:worker.2"


def pids(group: ProcessGroup) -> dict[str, int | None]:
    return {name: proc.snapshot()["pid"] for name, proc in group.processes.items()}


def states(group: ProcessGroup) -> dict[str, ProcessState]:
    return {name: proc.state for name, proc in group.processes.items()}


def specs(*made: ProcessSpec) -> dict[str, ProcessSpec]:
    return {spec.name: spec for spec in made}


def spawned_pids(harness: Harness) -> set[int]:
    """Every pid any slot was spawned with (from the fixed `spawned:` phrase)."""
    return {int(match[1]) for _, event, phrase in harness.events.seen if event == "STARTING"
            if (match := re.search(r" with pid (\d+)$", phrase))}


async def always_ready(spec: ProcessSpec) -> str:
    return ""


async def test_apply_starts_stops_and_replaces_only_what_changed(harness: Harness) -> None:
    group = harness.group()
    one, two = harness.spec("sleep 300", W1), harness.spec("sleep 300", W2)
    assert await group.apply(specs(one, two)) == Plan(start=(W1, W2), stop=(), replace=())
    assert states(group) == {W1: S.RUNNING, W2: S.RUNNING}
    first = pids(group)

    assert await group.apply(specs(one, two)) == Plan((), (), ())
    assert pids(group) == first

    changed = replace(one, command="sleep 299")
    assert await group.apply(specs(changed)) == Plan(start=(), stop=(W2,), replace=(W1,))
    assert list(group.processes) == [W1] and group.processes[W1].spec == changed
    assert states(group) == {W1: S.RUNNING}
    assert gone(first[W1] or 0) and gone(first[W2] or 0)


async def test_a_stop_of_many_slots_reads_the_daemons_children_once(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stops begun together share one read of the daemon's children, and their exits
    read none (a sweep peeks at exited children): stopping N slots is linear, not N reads
    of N children for the stops and N more for the exits."""
    group = harness.group()
    # `; true` keeps the shell as each slot's main process: two processes per slot
    slots = [harness.spec("sleep 300; true", f"t:worker.{n}") for n in range(1, 21)]
    await group.apply(specs(*slots))
    started = set(pids(group).values())
    reads: list[int] = []
    read = children.own_children

    def counted() -> set[int]:
        reads.append(1)
        return read()
    monkeypatch.setattr(children, "own_children", counted)
    await group.stop()
    assert len(reads) == 1
    assert all(gone(pid or 0) for pid in started)


async def test_a_rolling_replace_waits_for_each_new_process(harness: Harness) -> None:
    group = harness.group()
    await group.apply(specs(harness.spec("sleep 300", W1), harness.spec("sleep 300", W2)))
    del harness.events.seen[:]
    await group.apply(specs(harness.spec("sleep 299", W1), harness.spec("sleep 299", W2)))
    order = [(name, event) for name, event, _ in harness.events.seen
             if event in ("STOPPED", "RUNNING")]
    assert order == [(W1, "STOPPED"), (W1, "RUNNING"), (W2, "STOPPED"), (W2, "RUNNING")]


async def test_a_rolling_replace_stops_at_the_first_new_process_that_fails(
        harness: Harness) -> None:
    group = harness.group()
    old_two = harness.spec("sleep 300", W2)
    await group.apply(specs(harness.spec("sleep 300", W1), old_two))
    before = pids(group)
    with pytest.raises(DeployError, match=f"{W1} did not start .*the processes after it "
                                          "were not replaced"):
        await group.apply(specs(harness.spec("exit 1", W1), harness.spec("exit 1", W2)))
    assert group.processes[W2].spec == old_two and pids(group)[W2] == before[W2]
    assert group.processes[W1].state in (S.BACKOFF, S.STARTING)     # retrying, as a crash does


async def test_apply_with_a_readiness_check_that_fails_starts_nothing(harness: Harness) -> None:
    group = harness.group()
    one = harness.spec("sleep 300", W1)
    await group.apply(specs(one))
    before = pids(group)

    async def not_ready(spec: ProcessSpec) -> str:
        return "no answer"

    with pytest.raises(DeployError, match=f"{W2} no answer"):
        await group.apply(specs(harness.spec("sleep 300", W2)), ready=not_ready)
    assert pids(group) == before and states(group) == {W1: S.RUNNING}
    assert all(gone(pid) for pid in spawned_pids(harness) - {before[W1]})


async def test_apply_that_cannot_spawn_a_new_process_fails_and_stops_it(
        harness: Harness) -> None:
    group = harness.group()
    one = harness.spec("sleep 300", W1)
    await group.apply(specs(one))
    before = pids(group)
    nowhere = replace(harness.spec("sleep 300", W2), cwd=harness.root / "missing")
    with pytest.raises(DeployError, match=f"the new processes did not start: {W2} "
                                          r"\(could not start: .*No such file"):
        await group.apply(specs(one, nowhere))
    assert pids(group) == before and list(group.processes) == [W1]


async def test_a_switch_routes_to_the_new_generation_then_stops_the_old(
        harness: Harness) -> None:
    group = harness.group()
    await group.apply(specs(harness.spec("sleep 300", W1), harness.spec("sleep 300", W2)))
    old = dict(group.processes)
    old_pids = pids(group)
    routed: list[dict[str, ProcessState]] = []

    async def route(desired: Mapping[str, ProcessSpec]) -> None:
        # Traffic moves while both generations run: the old one has not been touched.
        assert {name: proc.state for name, proc in old.items()} == {W1: S.RUNNING, W2: S.RUNNING}
        assert not any(gone(pid or 0) for pid in old_pids.values())
        routed.append({name: proc.state for name, proc in group.incoming.items()})

    new = specs(harness.spec("sleep 299", W1), harness.spec("sleep 299", W2))
    await group.switch(new, ready=always_ready, route=route)
    assert routed == [{W1: S.RUNNING, W2: S.RUNNING}]
    assert group.incoming == {} and group.specs == new and states(group) == {
        W1: S.RUNNING, W2: S.RUNNING}
    await group.retired()
    assert all(proc.state is S.STOPPED for proc in old.values())
    assert all(gone(pid or 0) for pid in old_pids.values())
    assert set(pids(group).values()).isdisjoint(old_pids.values())


async def test_a_switch_returns_once_routed_and_the_old_generation_retires_after(
        harness: Harness) -> None:
    """The deploy does not wait for the drain: the old generation still runs when the
    switch returns, stops in the background (its outcome an event for the app's log),
    and a stop of the whole group cuts its drain short."""
    group = harness.group()
    await group.apply(specs(harness.spec("sleep 300", W1)))
    old = group.processes[W1]
    await group.switch(specs(harness.spec("sleep 299", W1)), ready=always_ready, grace=0.0)
    assert old.state is S.RUNNING and group.processes[W1] is not old
    phrase = await harness.events.nth(None, "retired")
    assert phrase.startswith(f"retired: {W1} (the previous generation, drained and stopped")
    assert old.state is S.STOPPED

    current = group.processes[W1]
    await group.switch(specs(harness.spec("sleep 298", W1)), ready=always_ready, grace=600.0)
    assert current.state is S.RUNNING           # draining for 600 s
    async with asyncio.timeout(5):
        await group.stop()
    assert current.state is S.STOPPED and group.processes == {}
    assert len([e for _, e, _ in harness.events.seen if e == "retired"]) == 1


async def test_retired_slots_leave_the_group_at_once_and_free_their_port_for_a_new_one(
        harness: Harness) -> None:
    """A scale-down's slots drain and stop in the background; a slot started on the
    same port (scaled up again meanwhile) waits for them: a listener binds once."""
    group = harness.group()
    web1, web2 = (replace(harness.spec("sleep 300", f"t:web.{n}"), port=n) for n in (1, 2))
    await group.apply(specs(web1, web2))
    leaving = group.processes["t:web.2"]
    group.retire(["t:web.2"], grace=0.3)
    assert list(group.processes) == ["t:web.1"] and leaving.state is S.RUNNING
    async with asyncio.timeout(5):
        await group.apply(specs(web1, web2))
    assert leaving.state is S.STOPPED and group.processes["t:web.2"] is not leaving
    phrase = await harness.events.nth(None, "retired")
    assert phrase.startswith("retired: t:web.2 (scaled away, drained and stopped in")


async def test_a_process_that_answers_its_readiness_check_is_running_at_once(
        harness: Harness) -> None:
    """A web process is proved ready by its check; it does not wait out a long
    PIKU_START_SECS, and an early exit afterwards counts as after a stable run."""
    slow = replace(QUICK, start_secs=600.0)
    web = replace(harness.spec("sleep 300", "t:web.1", policy=slow), port=1)
    checked: list[str] = []

    async def ready(spec: ProcessSpec) -> str:
        checked.append(spec.name)
        return ""

    group = harness.group()
    async with asyncio.timeout(5):
        await group.switch(specs(web), ready=ready)
    proc = group.processes["t:web.1"]
    assert checked == ["t:web.1"] and proc.state is S.RUNNING
    assert harness.events.of("t:web.1")[-1] == (
        "RUNNING", "success: t:web.1 entered RUNNING state, it answered its readiness check")
    assert proc.child is not None
    os.kill(proc.child.pid, signal.SIGKILL)
    assert (await harness.events.nth("t:web.1", "EXITED")).startswith("exited: t:web.1")


async def test_a_web_process_that_exits_before_its_check_passes_fails_the_switch(
        harness: Harness) -> None:
    web = replace(harness.spec("exit 3", "t:web.1"), port=1)

    async def never(spec: ProcessSpec) -> str:
        await asyncio.Event().wait()
        return ""

    group = harness.group()
    with pytest.raises(DeployError, match=r"t:web.1 BACKOFF \(exit status 3\)"):
        async with asyncio.timeout(5):
            await group.switch(specs(web), ready=never)
    assert group.processes == {} and group.incoming == {}


@pytest.mark.parametrize("failure", ["dies", "never ready", "route fails"])
async def test_a_failed_switch_stops_the_new_generation_and_leaves_the_old_untouched(
        harness: Harness, failure: str) -> None:
    group = harness.group()
    old_specs = specs(harness.spec("sleep 300", W1), harness.spec("sleep 300", W2))
    await group.apply(old_specs)
    old = dict(group.processes)
    old_pids = pids(group)

    async def ready(spec: ProcessSpec) -> str:
        return "no answer on its port" if failure == "never ready" else ""

    async def route(desired: Mapping[str, ProcessSpec]) -> None:
        if failure == "route fails":
            raise DeployError("nginx -t refused the site")

    command = "exit 1" if failure == "dies" else "sleep 299"
    new = specs(harness.spec(command, W1), harness.spec(command, W2))
    expected = {"dies": f"{W1} BACKOFF \\(exit status 1\\)", "never ready":
                f"{W1} no answer on its port", "route fails": "nginx -t refused"}[failure]
    with pytest.raises(DeployError, match=expected):
        await group.switch(new, ready=ready, route=route)

    assert group.processes == old and group.incoming == {} and group.specs == old_specs
    assert pids(group) == old_pids and states(group) == {W1: S.RUNNING, W2: S.RUNNING}
    new_pids = spawned_pids(harness) - set(old_pids.values())
    assert len(new_pids) >= 2 and all(gone(pid) for pid in new_pids)
    # The old processes saw nothing of it: the same children, never restarted.
    assert all(proc.restarts == 0 and proc.child is not None and not proc.child.exited
               for proc in old.values())


async def test_a_failed_switch_of_a_fixed_port_slot_brings_the_old_one_back(
        harness: Harness) -> None:
    """A slot that cannot run twice (a fixed PORT) stops before its successor starts;
    when the successor fails, the old spec runs again."""
    group = harness.group()
    old_spec = harness.spec("sleep 300", W1)
    await group.apply(specs(old_spec))
    old_pid = pids(group)[W1]
    with pytest.raises(DeployError, match=f"{W1} BACKOFF"):
        await group.switch(specs(harness.spec("exit 1", W1)), exclusive=[W1])
    assert old_pid is not None and gone(old_pid)
    assert group.specs == specs(old_spec) and group.incoming == {}
    assert await group.processes[W1].started(5)
    order = [event for name, event, _ in harness.events.seen if event in ("STOPPED", "STARTING")]
    assert order == ["STARTING", "STOPPED", "STARTING", "STOPPED", "STARTING"]
