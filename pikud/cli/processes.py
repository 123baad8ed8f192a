"""The `piku` commands about apps and their processes: apps, ps, ps:scale,
start, stop, restart, destroy, logs and run (click + stdlib only)."""

from __future__ import annotations

import json
import os
import sys
from contextlib import closing
from typing import Any
from urllib.parse import urlencode

import click

from pikud.cli.common import (
    LONG_TIMEOUT,
    allowed,
    app_path,
    client,
    color,
    emit,
    end_when_reader_leaves,
    json_option,
    pairs,
    print_json,
)
from pikud.output import format_apps, format_log_line, format_ps


@click.command("apps")
@json_option
def apps(as_json: bool) -> None:
    """List apps; * marks the running ones."""
    data = client().request("GET", "/apps")
    emit(data, as_json, lambda d: format_apps(d["apps"], color(), d.get("problems", ())))


def _lifecycle(name: str, done: str, doc: str) -> click.Command:
    """One ``POST /apps/APP/<name>`` command that prints the ps table."""

    @click.command(name, help=doc)
    @click.argument("app")
    @json_option
    def command(app: str, as_json: bool) -> None:
        detail = client(LONG_TIMEOUT).request("POST", app_path(app, name))
        emit(detail, as_json, lambda d: f"-----> {app} {done}\n{format_ps(d, color())}")

    return command


restart = _lifecycle("restart", "restarted", "Restart APP's processes, one by one.")
stop = _lifecycle("stop", "stopped", "Stop APP's processes (it stays stopped until start).")
start = _lifecycle("start", "started", "Start APP's processes.")


@click.command("destroy")
@click.argument("app")
@json_option
def destroy(app: str, as_json: bool) -> None:
    """Remove APP (its data and cache are kept).

    Removes the code, repo, env, logs and nginx files; data/APP and
    cache/APP stay.
    """
    data = client(LONG_TIMEOUT).request("DELETE", app_path(app))
    if as_json:
        print_json(data)
        return
    for path in data["removed"]:
        click.echo(f"-----> Removed {path}")
    for path in data["kept"]:
        click.echo(f"-----> Kept {path}")
    click.echo(f"-----> {app} destroyed; its data and cache were kept "
               "(remove them by hand if unwanted)")


@click.command("logs")
@click.argument("app")
@click.argument("kind", required=False)
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(min=0),
              help="How many past lines to show.")
@click.option("--follow/--no-follow", default=True, show_default=True,
              help="Keep printing new lines.")
@json_option
def logs(app: str, kind: str | None, lines: int, follow: bool, as_json: bool) -> None:
    """Show APP's latest log lines, then follow them.

    KIND limits them to one Procfile kind; Ctrl-C stops following. With
    --json each line is printed as one JSON object (NDJSON).
    """
    query = {"lines": lines, **({"kind": kind} if kind else {}),
             **({"follow": 1} if follow else {})}
    path = f"{app_path(app, 'logs')}?{urlencode(query)}"
    colored, width = color(), 0

    def show(line: dict[str, Any]) -> None:
        nonlocal width
        width = max(width, len(str(line["source"])))
        click.echo(json.dumps(line) if as_json else format_log_line(line, colored, width))

    if not follow:
        past = client().request("GET", path)["lines"]
        width = max((len(str(line["source"])) for line in past), default=0)
        for line in past:
            show(line)
        return
    end_when_reader_leaves()
    try:
        with closing(client().stream("GET", path)) as stream:
            for line in stream:
                if "line" in line:
                    show(line)
    except KeyboardInterrupt:
        return


@click.command("ps")
@click.argument("app")
@json_option
def ps(app: str, as_json: bool) -> None:
    """Show APP's processes and their live state.

    One row per process: state, pid, uptime, restarts, last exit, memory.
    """
    detail = client().request("GET", app_path(app))
    emit(detail, as_json, lambda d: format_ps(d, color()))


@click.command("ps:scale")
@click.argument("app")
@click.argument("counts", nargs=-1, required=True)
@json_option
def ps_scale(app: str, counts: tuple[str, ...], as_json: bool) -> None:
    """Set how many processes of each kind APP runs.

    Arguments are KIND=N with N >= 0, e.g. piku ps:scale app web=2 worker=0.
    """
    scaling: dict[str, int] = {}
    for kind, n in pairs(counts, "KIND=N", "COUNTS"):
        if not (n.isascii() and n.isdigit()):
            raise click.BadParameter(f"{kind}={n}: N must be a whole number >= 0",
                                     param_hint="COUNTS")
        if len(n.lstrip("0")) > 9:      # far above any ceiling; int() refuses 4,301 digits
            raise click.BadParameter(f"{kind}={n[:12]}...: N is too large", param_hint="COUNTS")
        if kind in scaling:
            raise click.BadParameter(f"{kind} is given twice", param_hint="COUNTS")
        scaling[kind] = int(n)
    detail = client(LONG_TIMEOUT).request("POST", app_path(app, "scale"), {"scaling": scaling})
    emit(detail, as_json, lambda d: f"-----> {app} scaled\n{format_ps(d, color())}")


@click.command("run", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.argument("app")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def run(app: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in APP's directory with its live environment.

    Use ssh -t (piku -t run ...) for an interactive tty. The first `--`, before
    the command or inside it, is dropped as piku's parser drops it:
    `run APP -- ls -al` and `run APP ls -- -al` both run `ls -al`.
    """
    if "--" in cmd:
        at = cmd.index("--")
        cmd = cmd[:at] + cmd[at + 1:]
    if not cmd:
        raise click.UsageError("no command given: piku run APP CMD...")
    allowed("run", app)
    live = client().request("GET", app_path(app, "config", "live"))
    try:
        os.chdir(live["cwd"])
    except OSError as exc:
        raise click.ClickException(f"cannot enter {live['cwd']}: {exc.strerror}") from None
    sys.stdout.flush()
    try:
        os.execvpe("/bin/sh", ["/bin/sh", "-c", " ".join(cmd)], live["env"])
    except OSError as exc:
        raise click.ClickException(f"cannot run /bin/sh: {exc.strerror}") from None
