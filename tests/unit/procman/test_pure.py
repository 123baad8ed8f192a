"""The pure core of procman: states, restart policy, reconciliation plan."""

from __future__ import annotations

import pytest

from pikud.procman.idle import busy_ports, busy_sockets, check_interval
from pikud.procman.plan import Plan, plan
from pikud.procman.policy import MIN_INTERVAL, Backoff, Decision, RestartPolicy, decide
from pikud.procman.shell import shell_argv
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
    # supervision failed: FATAL from anywhere (what ran is stopped first)
    (S.STOPPED, S.FATAL, True),
    (S.RUNNING, S.FATAL, True),
    (S.EXITED, S.FATAL, True),
    (S.BACKOFF, S.FATAL, True),
    (S.STOPPING, S.FATAL, True),
    (S.IDLE, S.FATAL, True),
    (S.FATAL, S.FATAL, True),
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
    # no attempt count overflows: 2 ** 1024 is past every float
    (0.0, 0.0, 1025, 0.0),
    (0.0, 0.0, 10 ** 30, 0.0),
    (1.0, 30.0, 1025, 30.0),
    (1.0, 30.0, 10 ** 30, 30.0),
    (1e-300, 1e300, 5000, 1e300),
    (1.0, float("inf"), 1025, float("inf")),
    (float("inf"), float("inf"), 10 ** 6, float("inf")),
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


HOT = RestartPolicy(start_secs=0.0, backoff_base=0.0, backoff_max=0.0,
                    start_retries=10 ** 6, fatal_cooloff=0.0)


@pytest.mark.parametrize("policy, uptime, failures, decision", [
    # whatever the settings, a slot spawns at most once every MIN_INTERVAL (0.1 s)
    (HOT, 0.02, 0, Decision(S.EXITED, 0.08, 0)),        # START_SECS=0: every exit "stable"
    (HOT, 0.5, 0, Decision(S.EXITED, 0.0, 0)),
    (RestartPolicy(start_secs=1.0, backoff_base=0.0, backoff_max=0.0, start_retries=10 ** 6),
     0.002, 1023, Decision(S.BACKOFF, 0.098, 1024)),
    (RestartPolicy(start_secs=1.0, backoff_base=0.0, backoff_max=0.0, start_retries=10 ** 30),
     0.0, 10 ** 20, Decision(S.BACKOFF, 0.1, 10 ** 20 + 1)),
    (RestartPolicy(start_secs=1.0, start_retries=0, fatal_cooloff=0.0),
     0.0, 0, Decision(S.FATAL, 0.1, 1)),
    (RestartPolicy(start_secs=1.0, backoff_base=0.05, backoff_max=0.5),
     0.01, 0, Decision(S.BACKOFF, 0.09, 1)),              # base below the floor
    (RestartPolicy(start_secs=1.0, backoff_base=0.05, backoff_max=0.5),
     0.01, 2, Decision(S.BACKOFF, 0.2, 3)),               # above it: the backoff stands
])
def test_no_slot_respawns_faster_than_the_floor(policy: RestartPolicy, uptime: float,
                                                 failures: int, decision: Decision) -> None:
    assert MIN_INTERVAL == 0.1
    assert decide(uptime, failures, policy) == decision


@pytest.mark.parametrize("command, argv_command", [
    ("python3 app.py", "exec python3 app.py"),
    ("gunicorn -b :$PORT app:app", "exec gunicorn -b :$PORT app:app"),
    ("  node index.js", "exec   node index.js"),
    ("exec node index.js", "exec node index.js"),
    # builtins that are programs too may be exec'd: the program does the same
    ("true", "exec true"),
    ("echo hello", "exec echo hello"),
    ("test -f x", "exec test -f x"),
    ("kill -0 1", "exec kill -0 1"),
    # shell syntax: the shell runs it
    ("sleep 1000; echo done", "sleep 1000; echo done"),
    ("node index.js 2>&1 | cat", "node index.js 2>&1 | cat"),
    ("cd sub && ./run", "cd sub && ./run"),
    ("./run &", "./run &"),
    ("(./run)", "(./run)"),
    ("echo `date`", "echo `date`"),
    ("echo $(date)", "echo $(date)"),
    ("A=1 ./run", "A=1 ./run"),
    # special builtins: no program of that name; exec'd they failed with 127
    ("exit 1", "exit 1"),
    (". ./settings.sh", ". ./settings.sh"),
    (": nothing", ": nothing"),
    ("break", "break"),
    ("continue", "continue"),
    ("eval ./run", "eval ./run"),
    ("export A=1", "export A=1"),
    ("readonly A", "readonly A"),
    ("return 2", "return 2"),
    ("set -e", "set -e"),
    ("shift", "shift"),
    ("times", "times"),
    ("trap '' TERM", "trap '' TERM"),
    ("unset A", "unset A"),
    # regular builtins that are no program
    ("cd /tmp", "cd /tmp"),
    ("source ./settings.sh", "source ./settings.sh"),
    ("ulimit -n 64", "ulimit -n 64"),
    ("umask 077", "umask 077"),
    ("wait", "wait"),
    ("read line", "read line"),
    ("alias ll=ls", "alias ll=ls"),
    ("unalias ll", "unalias ll"),
    ("command -v python3", "command -v python3"),
    ("type python3", "type python3"),
    ("hash python3", "hash python3"),
    ("getopts a opt", "getopts a opt"),
    ("jobs", "jobs"),
    ("local a", "local a"),
    # keywords
    ("if true", "if true"),
    ("while true", "while true"),
    ("for a in b", "for a in b"),
    ("case a in", "case a in"),
    ("! false", "! false"),
    ("{ ./run", "{ ./run"),
    ("until false", "until false"),
    ("", ""),
])
def test_shell_argv_execs_only_a_program(command: str, argv_command: str) -> None:
    assert shell_argv(command) == ["/bin/sh", "-c", argv_command]


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


# /proc/net/unix as Linux 6.x writes it: listeners are state 01 (flags 00010000); a
# connection waiting to be accepted (02) or accepted (03) names the listener's path too.
UNIX_TABLE = """\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 101 /srv/s/quiet.sock
0000000000000000: 00000002 00000000 00010000 0001 01 102 /srv/s/queued.sock
0000000000000000: 00000003 00000000 00000000 0001 02     0 /srv/s/queued.sock
0000000000000000: 00000002 00000000 00010000 0001 01 103 /srv/s/open one.sock
0000000000000000: 00000003 00000000 00000000 0001 03 104 /srv/s/open one.sock
0000000000000000: 00000003 00000000 00000000 0001 03 105
0000000000000000: 00000002 00000000 00000000 0002 01 106 @abstract
"""


@pytest.mark.parametrize("paths, busy", [
    ({"/srv/s/quiet.sock"}, set()),                         # listening, nothing else
    ({"/srv/s/queued.sock"}, {"/srv/s/queued.sock"}),       # one waits to be accepted
    ({"/srv/s/open one.sock"}, {"/srv/s/open one.sock"}),   # accepted; a space in the path
    ({"/srv/s/quiet.sock", "/srv/s/queued.sock"}, {"/srv/s/queued.sock"}),
    ({"/srv/s/gone.sock"}, set()),
])
def test_busy_sockets(paths: set[str], busy: set[str]) -> None:
    assert busy_sockets(UNIX_TABLE, paths) == busy


@pytest.mark.parametrize("timeout, interval", [(0.5, 0.25), (2, 0.5), (60, 5.0), (3600, 5.0)])
def test_an_idle_app_is_looked_at_often_enough_but_not_more(timeout: float,
                                                             interval: float) -> None:
    assert check_interval(timeout) == interval
