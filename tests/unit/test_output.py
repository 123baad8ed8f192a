"""The CLI's pure formatters, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from pikud.output import (
    format_access,
    format_apps,
    format_audit,
    format_bytes,
    format_duration,
    format_env,
    format_formation,
    format_log_line,
    format_ps,
    format_status,
    format_table,
    style,
    visible_len,
)

GREEN, YELLOW, RED = "\x1b[32m", "\x1b[33m", "\x1b[31m"
DIM, BOLD, RESET = "\x1b[2m", "\x1b[1m", "\x1b[0m"


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"),
    (3, "3s"),
    (3.9, "3s"),
    (59, "59s"),
    (60, "1m00s"),
    (252, "4m12s"),
    (3599, "59m59s"),
    (3600, "1h00m"),
    (2 * 3600 + 3 * 60 + 59, "2h03m"),
    (86399, "23h59m"),
    (86400, "1d00h"),
    (3 * 86400 + 4 * 3600 + 59 * 60, "3d04h"),
    (400 * 86400, "400d00h"),
    (-5, "0s"),
])
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize(("n", "text"), [
    (0, "0B"),
    (1023, "1023B"),
    (1024, "1.0K"),
    (1536, "1.5K"),
    (int(24.1 * 1024 * 1024), "24.1M"),
    (1024 * 1024 - 1, "1.0M"),
    (3 * 1024 ** 3, "3.0G"),
    (5 * 1024 ** 4, "5.0T"),
    (2048 * 1024 ** 5, "2048.0P"),
])
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text


@pytest.mark.parametrize(("headers", "rows", "align", "text"), [
    (["A", "B"], [], "", "A  B"),
    (["NAME", "N"], [["web", "1"], ["worker", "12"]], "",
     "NAME    N\n"
     "web     1\n"
     "worker  12"),
    (["NAME", "N"], [["web", "1"], ["worker", "12"]], "<>",
     "NAME     N\n"
     "web      1\n"
     "worker  12"),
    # Colour takes no width: the second column still lines up.
    (["S", "X"], [[f"{GREEN}RUNNING{RESET}", "a"], ["EXITED", "b"]], "",
     "S        X\n"
     f"{GREEN}RUNNING{RESET}  a\n"
     "EXITED   b"),
])
def test_format_table(headers: list[str], rows: list[list[str]], align: str, text: str) -> None:
    assert format_table(headers, rows, align) == text


def test_format_table_rejects_ragged_rows() -> None:
    with pytest.raises(ValueError, match="2 cells, expected 3"):
        format_table(["A", "B", "C"], [["1", "2"]])


@pytest.mark.parametrize(("text", "name", "color", "out"), [
    ("x", "green", True, f"{GREEN}x{RESET}"),
    ("x", "green", False, "x"),
    ("x", None, True, "x"),
])
def test_style(text: str, name: str | None, color: bool, out: str) -> None:
    assert style(text, name, color) == out
    assert visible_len(out) == len(text)


@pytest.mark.parametrize(("formation", "text"), [
    ({}, "none"),
    ({"worker": 1, "web": 2}, "web=2 worker=1"),
])
def test_format_formation(formation: dict[str, int], text: str) -> None:
    assert format_formation(formation) == text


APPS = [
    {"name": "zeta", "state": "stopped", "formation": {}, "processes": {}},
    {"name": "alpha", "state": "running", "formation": {"web": 1}, "processes": {"RUNNING": 1}},
]


@pytest.mark.parametrize(("apps", "color", "text"), [
    ([], False, "There are no applications deployed."),
    (APPS, False, "* alpha\n  zeta"),
    (APPS, True, f"* {GREEN}alpha{RESET}\n  zeta"),
])
def test_format_apps(apps: list[dict[str, Any]], color: bool, text: str) -> None:
    assert format_apps(apps, color) == text


def _proc(kind: str, index: int, state: str, **fields: Any) -> dict[str, Any]:
    base = {"name": f"myapp:{kind}.{index}", "kind": kind, "index": index, "pid": None,
            "state": state, "uptime": None, "restarts": 0, "last_exit": None, "rss": None}
    return {**base, **fields}


DETAIL = {
    "name": "myapp",
    "state": "running",
    "formation": {"web": 2, "worker": 1},
    "processes": [
        _proc("worker", 1, "BACKOFF", restarts=3, last_exit="exit status 1"),
        _proc("web", 2, "RUNNING", pid=4242, uptime=3 * 86400 + 4 * 3600, rss=2048),
        _proc("web", 1, "RUNNING", pid=123, uptime=252, rss=int(24.1 * 1024 * 1024), restarts=12),
    ],
}

def test_format_ps_plain() -> None:
    # Rows are sorted by kind then index; numbers are right-aligned; None is "-".
    assert format_ps(DETAIL, color=False).splitlines() == [
        "myapp: running  formation: web=2 worker=1",
        "PROCESS   STATE     PID  UPTIME  RESTARTS  LAST EXIT        RSS",
        "web.1     RUNNING   123   4m12s        12  -              24.1M",
        "web.2     RUNNING  4242   3d04h         0  -               2.0K",
        "worker.1  BACKOFF     -       -         3  exit status 1      -",
    ]


def test_format_ps_shows_limits_and_their_usage_only_when_some_are_set() -> None:
    limited = {**DETAIL, "processes": [
        _proc("web", 1, "RUNNING", pid=123, uptime=5, rss=2048,
              limits={"PIKU_MEMORY_MAX": "256M", "PIKU_CPU_MAX": "50%",
                      "PIKU_TASKS_MAX_WEB": "64", "PIKU_NOFILE_MAX": "1024"},
              usage={"tasks": 3, "nofile": 12, "memory": 3 * 1024 * 1024}),
        _proc("worker", 1, "FATAL", limits={"PIKU_NOFILE_MAX": "32"},
              last_exit="killed by SIGKILL; exceeded PIKU_MEMORY_MAX 256M"),
        _proc("clock", 1, "RUNNING", pid=7, uptime=5),
    ]}
    exit = "killed by SIGKILL; exceeded PIKU_MEMORY_MAX 256M"
    assert format_ps(limited, color=False).splitlines()[1:] == [
        f"PROCESS   STATE    PID  UPTIME  RESTARTS  {'LAST EXIT':{len(exit)}}   RSS  LIMITS",
        f"clock.1   RUNNING    7      5s         0  {'-':{len(exit)}}     -  -",
        f"web.1     RUNNING  123      5s         0  {'-':{len(exit)}}  2.0K  "
        "mem 3.0M/256M cpu 50% tasks 3/64 files 12/1024",
        f"worker.1  FATAL      -       -         0  {exit}     -  files 32",
    ]
    assert "LIMITS" not in format_ps(DETAIL, color=False)


@pytest.mark.parametrize(("state", "code"), [
    ("RUNNING", GREEN), ("STARTING", YELLOW), ("BACKOFF", YELLOW), ("STOPPING", YELLOW),
    ("FATAL", RED), ("EXITED", RED), ("STOPPED", DIM),
])
def test_format_ps_colours_states(state: str, code: str) -> None:
    detail = {"name": "a", "state": "stopped", "formation": {"web": 1},
              "processes": [_proc("web", 1, state)]}
    coloured = format_ps(detail, color=True)
    assert f"{code}{state}{RESET}" in coloured
    assert coloured.splitlines()[0] == f"{BOLD}a{RESET}: {DIM}stopped{RESET}  formation: web=1"
    # The columns still line up: without the escapes it is the plain table.
    plain = format_ps(detail, color=False)
    assert ([visible_len(line) for line in coloured.splitlines()]
            == [len(line) for line in plain.splitlines()])


def test_format_ps_without_processes() -> None:
    detail = {"name": "a", "state": "stopped", "formation": {}, "processes": []}
    assert format_ps(detail, color=False) == "a: stopped  formation: none\n(no processes)"


@pytest.mark.parametrize(("line", "color", "width", "text"), [
    ({"source": "web.1", "line": "hello"}, False, 0, "web.1 | hello"),
    ({"source": "web.1", "line": "hello"}, False, 8, "web.1    | hello"),
    ({"source": "worker.10", "line": "x"}, False, 5, "worker.10 | x"),
    ({"source": "web.1", "line": ""}, False, 0, "web.1 | "),
])
def test_format_log_line(line: dict[str, str], color: bool, width: int, text: str) -> None:
    assert format_log_line(line, color, width) == text


def test_format_log_line_colours_the_source_only() -> None:
    text = format_log_line({"source": "web.1", "line": "hello"}, True, 8)
    source, _, rest = text.partition(" | ")
    assert rest == "hello"
    assert source.startswith("\x1b[") and source.endswith(RESET)
    assert visible_len(source) == 8
    # The same source always gets the same colour.
    assert format_log_line({"source": "web.1", "line": "x"}, True, 8).startswith(source)


@pytest.mark.parametrize(("env", "text"), [
    ({}, ""),
    ({"B": "2", "A": "1"}, "A=1\nB=2"),
    ({"URL": "postgres://u:p@h/db?x=1", "EMPTY": ""}, "EMPTY=\nURL=postgres://u:p@h/db?x=1"),
])
def test_format_env(env: dict[str, str], text: str) -> None:
    assert format_env(env) == text


def test_problems_follow_the_apps_and_the_process_table() -> None:
    apps = [{"name": "b", "state": "running", "problems": ["records rebuilt"]},
            {"name": "a", "state": "stopped"}]
    assert format_apps(apps, False, ["state.json was corrupt"]) == (
        "  a\n* b\n! state.json was corrupt\n! b: records rebuilt")
    assert format_apps([], False, ["x"]) == "There are no applications deployed.\n! x"
    detail = {"name": "b", "state": "running", "formation": {}, "processes": [],
              "problems": ["state.json could not be saved"]}
    assert format_ps(detail, False).splitlines()[-2:] == [
        "(no processes)", "! state.json could not be saved"]
    assert "\x1b[31m! x" in format_apps([], True, ["x"])


STATUS = {"version": "0.2.0", "pid": 812, "uptime": 7384.2, "image_uptime": 4.9,
          "started": "re-exec", "loop": "uvloop", "root": "/home/piku/.piku",
          "http": None, "apps": 3, "processes": 4,
          "apps_by_state": {"running": 2, "stopped": 1},
          "processes_by_state": {"RUNNING": 3, "BACKOFF": 1}, "errors": []}


def test_format_status() -> None:
    assert format_status(STATUS, color=False).splitlines() == [
        "pikud      0.2.0 (pid 812, loop uvloop)",
        "up         2h03m; this image 4s, started by re-exec",
        "root       /home/piku/.piku",
        "http       -",
        "apps       running 2, stopped 1",
        "processes  BACKOFF 1, RUNNING 3",
    ]


def test_format_status_lists_the_last_errors_with_pikud_for_its_own() -> None:
    errors = [{"time": 0.0, "app": "shop", "event": "FATAL", "message": "gave up: shop:web.1"},
              {"time": 0.0, "app": "", "event": "reexec_refused", "message": "re-exec refused: x"}]
    lines = format_status(dict(STATUS, errors=errors), color=False).splitlines()
    assert lines[6] == "last errors:"
    assert lines[7].endswith(" shop: gave up: shop:web.1")
    assert lines[8].endswith(" pikud: re-exec refused: x")


def test_format_access_says_the_mode() -> None:
    assert format_access({"mode": "open", "grants": [], "problem": None}).startswith(
        "No access rules: every key is admin")
    assert format_access({"mode": "rules", "grants": [], "problem": "x was corrupt"}) == (
        "-----> Warning: x was corrupt; every key is locked out until granted again\n"
        "No grants: no key may do anything (only the console can grant).")
    assert format_access({"mode": "rules", "problem": None, "grants": [
        {"key": "alice", "app": "*", "role": "admin"}]}) == (
        "KEY    APP  ROLE\nalice  *    admin")


def test_format_audit() -> None:
    assert format_audit([]) == "The audit log is empty"
    assert format_audit([
        {"time": "T1", "key": None, "command": "restart", "app": "a", "outcome": "ok"},
        {"time": "T2", "key": "bob", "command": "status", "app": None,
         "outcome": "forbidden", "message": "no"}]).splitlines() == [
        "TIME  KEY        COMMAND  APP  OUTCOME",
        "T1    (console)  restart  a    ok",
        "T2    bob        status   -    forbidden: no"]
