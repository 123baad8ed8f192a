"""The daemon's command line, parsed without argparse: what it accepts and what it names;
the front and loop launch.py picks from it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pikud.daemonargs import Exit, Serve, UsageError, parse
from pikud.launch import event_loop


def test_serve_takes_its_defaults_and_the_http_address_from_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PIKU_HTTP_ADDRESS", raising=False)
    assert parse(["serve"], "1.0") == Serve("auto", "127.0.0.1:8080")
    monkeypatch.setenv("PIKU_HTTP_ADDRESS", "127.0.0.1:9000")
    assert parse(["serve"], "1.0") == Serve("auto", "127.0.0.1:9000")


def test_options_take_their_value_after_a_space_or_an_equals_sign() -> None:
    assert parse(["serve", "--loop", "asyncio", "--http=[::1]:81"], "1.0") == \
        Serve("asyncio", "[::1]:81")
    assert parse(["serve", "--http", "a:1", "--http", "b:2"], "1.0") == Serve("auto", "b:2")


def test_help_and_version_ask_for_nothing_to_serve() -> None:
    assert parse(["--version"], "1.2.3") == Exit("pikud 1.2.3\n")
    for argv in (["-h"], ["--help"], ["serve", "--help"], ["serve", "--loop", "uvloop", "-h"]):
        result = parse(argv, "1.0")
        assert isinstance(result, Exit) and "--loop {auto,uvloop,asyncio}" in result.text


@pytest.mark.parametrize(("argv", "named"), [
    ([], "a command is required"),
    (["run"], "'run'"),
    (["serve", "--port", "80"], "'--port'"),
    (["serve", "--loop"], "--loop needs a value"),
    (["serve", "--loop", "trio"], "not 'trio'"),
    (["serve", "extra"], "'extra'"),
])
def test_a_wrong_command_line_is_named(argv: list[str], named: str) -> None:
    with pytest.raises(UsageError, match=named):
        parse(argv, "1.0")


def test_the_daemon_exits_2_with_the_usage_and_the_error() -> None:
    done = subprocess.run([sys.executable, "-m", "pikud", "serve", "--loop", "trio"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith("usage: pikud")
    assert ("pikud: error: serve: --loop must be one of auto, uvloop, asyncio, not 'trio'"
            in done.stderr)


def test_auto_runs_uvloop_for_the_router_and_stock_asyncio_behind_nginx() -> None:
    assert event_loop("auto", "builtin") == "uvloop"
    assert event_loop("auto", "nginx") == "asyncio"
    assert event_loop("uvloop", "nginx") == "uvloop"
    assert event_loop("asyncio", "builtin") == "asyncio"


def test_a_wrong_front_is_named_before_anything_starts() -> None:
    done = subprocess.run([sys.executable, "-m", "pikud", "serve"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PIKU_PROXY": "apache"})
    assert done.returncode == 1
    assert done.stderr == "pikud: PIKU_PROXY must be builtin, nginx or auto, got 'apache'\n"
