"""The pure core of procman: states, restart policy, reconciliation plan."""

from __future__ import annotations

import pytest

from pikud.procman.idle import busy_ports, check_interval
from pikud.procman.plan import Plan, plan
from pikud.procman.policy import Backoff, Decision, RestartPolicy, decide
from pikud.procman.state import ALLOWED, ProcessState, allowed

S = ProcessState


@pytest.mark.parametrize("old, new, ok", [
    (S.STOPPED, S.STARTING, True),
    (S.STOPPED, S.RUNNING, False),
    (S.STARTING, S.RUNNING, True),
    (S.STARTING, S.BACKOFF, True),
    (S.STARTING, S.FATAL, True),
    (S.STARTING, S.STOPPING, True),
    (S.RUNNING, S.EXITED, True),
    (S.RUNNING, S.BACKOFF, False),
    (S.RUNNING, S.STOPPING, True),
    (S.RUNNING, S.STOPPED, False),
    (S.EXITED, S.STARTING, True),
    (S.BACKOFF, S.STARTING, True),
    (S.BACKOFF, S.RUNNING, False),
    (S.BACKOFF, S.STOPPED, True),
    (S.STOPPING, S.STOPPED, True),
    (S.STOPPING, S.STARTING, False),
    (S.FATAL, S.STARTING, True),
    (S.FATAL, S.STOPPED, True),
    (S.FATAL, S.RUNNING, False),
    (S.STOPPING, S.IDLE, True),
    (S.RUNNING, S.IDLE, False),         # a sleeping slot's process is stopped first
    (S.IDLE, S.STARTING, True),
    (S.IDLE, S.STOPPED, True),
    (S.IDLE, S.RUNNING, False),
])
def test_transitions(old: ProcessState, new: ProcessState, ok: bool) -> None:
    assert allowed(old, new) is ok


def test_every_state_has_a_row_and_stopped_is_reachable_from_every_state() -> None:
    assert set(ALLOWED) == set(S)
    reachable = {S.STOPPED}
    while True:
        more = {old for old, news in ALLOWED.items() if news & reachable} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == set(S)


@pytest.mark.parametrize("base, cap, attempt, delay", [
    (1.0, 30.0, 0, 0.0),
    (1.0, 30.0, 1, 1.0),
    (1.0, 30.0, 2, 2.0),
    (1.0, 30.0, 5, 16.0),
    (1.0, 30.0, 6, 30.0),
    (1.0, 30.0, 60, 30.0),
    (0.1, 0.5, 3, 0.4),
    (0.1, 0.5, 4, 0.5),
])
def test_backoff_grows_and_is_capped(base: float, cap: float, attempt: int, delay: float) -> None:
    assert Backoff(base, cap).delay(attempt) == pytest.approx(delay)


POLICY = RestartPolicy(start_secs=1.0, backoff_base=1.0, backoff_max=30.0, start_retries=3,
                       fatal_cooloff=300.0)


@pytest.mark.parametrize("uptime, failures, decision", [
    (5.0, 0, Decision(S.EXITED, 0.0, 0)),          # stable run: respawn now
    (5.0, 3, Decision(S.EXITED, 0.0, 0)),          # a stable run resets the count
    (1.0, 2, Decision(S.EXITED, 0.0, 0)),          # exactly start_secs counts as stable
    (0.2, 0, Decision(S.BACKOFF, 1.0, 1)),
    (0.2, 1, Decision(S.BACKOFF, 2.0, 2)),
    (0.2, 2, Decision(S.BACKOFF, 4.0, 3)),
    (0.2, 3, Decision(S.FATAL, 300.0, 4)),         # retries used up
    (0.0, 9, Decision(S.FATAL, 300.0, 10)),
])
def test_decide(uptime: float, failures: int, decision: Decision) -> None:
    assert decide(uptime, failures, POLICY) == decision


def test_no_retries_means_fatal_at_the_first_quick_failure() -> None:
    policy = RestartPolicy(start_retries=0, fatal_cooloff=60.0)
    assert decide(0.1, 0, policy) == Decision(S.FATAL, 60.0, 1)


# plan(current, desired): process name -> spec (any comparable value)
@pytest.mark.parametrize("current, desired, expected", [
    ({}, {"a:web.1": 1}, Plan(("a:web.1",), (), ())),
    ({"a:web.1": 1}, {}, Plan((), ("a:web.1",), ())),
    ({"a:web.1": 1}, {"a:web.1": 1}, Plan((), (), ())),
    ({"a:web.1": 1}, {"a:web.1": 2}, Plan((), (), ("a:web.1",))),
    ({"a:w.1": 1, "a:w.2": 1, "a:w.3": 1}, {"a:w.1": 1}, Plan((), ("a:w.2", "a:w.3"), ())),
    ({"a:w.1": 1}, {"a:w.1": 1, "a:w.2": 1}, Plan(("a:w.2",), (), ())),
    ({"a:w.1": 1, "a:x.1": 1}, {"a:w.1": 2, "a:y.1": 1},
     Plan(("a:y.1",), ("a:x.1",), ("a:w.1",))),
])
def test_plan(current: dict, desired: dict, expected: Plan) -> None:
    assert plan(current, desired) == expected
    assert plan(current, desired).empty is (expected == Plan((), (), ()))


# /proc/net/tcp as the kernel writes it: ports 0x1F90 (8080) and 0x1F91 (8081)
TCP_TABLE = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1
   1: 0100007F:1F91 00000000:0000 0A 00000000:00000002 00:00000000 00000000  1000        0 2 1
   2: 0100007F:1F92 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 3 1
   3: 0100007F:1F92 0100007F:D431 01 00000000:00000000 00:00000000 00000000  1000        0 4 1
   4: 0100007F:1F93 0100007F:D432 06 00000000:00000000 03:00000F9A 00000000     0        0 0 3
   5: 0100007F:D433 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 5 1
"""


@pytest.mark.parametrize("ports, busy", [
    ({8080}, set()),                    # listening, nothing queued; a client socket to it
    ({8081}, {8081}),                   # two connections wait in the accept queue
    ({8082}, {8082}),                   # an established connection
    ({8083}, set()),                    # only TIME_WAIT
    ({8080, 8081, 8082, 8083}, {8081, 8082}),
    ({9999}, set()),
])
def test_busy_ports(ports: set[int], busy: set[int]) -> None:
    assert busy_ports(TCP_TABLE, ports) == busy


@pytest.mark.parametrize("timeout, interval", [(0.5, 0.25), (2, 0.5), (60, 5.0), (3600, 5.0)])
def test_an_idle_app_is_looked_at_often_enough_but_not_more(timeout: float,
                                                             interval: float) -> None:
    assert check_interval(timeout) == interval
