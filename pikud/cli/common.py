"""What every `piku` command shares: the daemon call and the way answers are printed.

Each command module calls the daemon through ``client()`` and prints with
``emit()``, so the socket path, the timeouts, ``--json`` and the colour rule
are decided here once. Stdlib and click only: every ssh command imports it.
"""

from __future__ import annotations

import json
import os
import select
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar
from urllib.parse import quote

import click

from pikud.control.client import Client
from pikud.control.protocol import FINGERPRINT_HEADER, KEY_HEADER
from pikud.paths import Paths

F = TypeVar("F", bound=Callable[..., Any])

# Deploys and restarts wait for readiness inside the daemon: allow them time.
LONG_TIMEOUT = 600.0


def caller() -> dict[str, str]:
    """The headers naming the ssh key this command runs for: NAME and FINGERPRINT, which
    the forced command sets (sshkeys.py). Without NAME, the console."""
    name = os.environ.get("NAME")
    if not name:
        return {}
    return {KEY_HEADER: name, FINGERPRINT_HEADER: os.environ.get("FINGERPRINT", "")}


def client(timeout: float | None = 30) -> Client:
    """A client of the daemon's socket under PIKU_ROOT; ``None`` waits forever (streams)."""
    return Client(Paths.from_env().socket, timeout=timeout, caller=caller())


def allowed(command: str, app: str | None = None) -> None:
    """Ask the daemon whether this key may run ``command`` (on ``app``), for the commands
    that exec something instead of calling a route; the console needs no answer."""
    if caller():
        client().request("POST", "/access/check", {"command": command, "app": app})


def app_path(app: str, *rest: str) -> str:
    """The API path of ``app`` (quoted, so any name stays one segment) and below."""
    return "/".join(["/apps", quote(app, safe=""), *rest])


def end_when_reader_leaves() -> None:
    """Exit as soon as whoever reads our output is gone (an ssh session closed), not at
    the next line written: a followed log may stay quiet for hours.

    A closed pipe or socket shows as POLLERR/POLLHUP on our end of it, which
    poll reports whatever events are asked for; a terminal's hang-up already
    sends SIGHUP. A thread watches, since the main one blocks in the stream.
    """
    try:
        fd = sys.stdout.fileno()
    except (OSError, ValueError):       # not a file (captured): nothing to watch
        return
    if os.isatty(fd):
        return

    def watch() -> None:
        poller = select.poll()
        poller.register(fd, 0)
        for _, events in poller.poll():
            if events & (select.POLLERR | select.POLLHUP):
                os._exit(0)         # nothing to flush: the reader is gone

    threading.Thread(target=watch, name="reader-watch", daemon=True).start()


def color() -> bool:
    """ANSI only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def json_option(func: F) -> F:
    """Every command takes ``--json``: the API's data instead of text."""
    option = click.option("--json", "as_json", is_flag=True, help="Print the API's data as JSON.")
    return option(func)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """The API's data as JSON, or rendered for people."""
    if as_json:
        print_json(data)
    else:
        click.echo(render(data))


def pairs(items: Iterable[str], what: str, param: str) -> list[tuple[str, str]]:
    """Split ``K=V`` words; a word without ``=`` or with an empty K is a usage error."""
    result = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not {what}", param_hint=param)
        result.append((key, value))
    return result

