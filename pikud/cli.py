"""The `piku` command: sshd's forced command, as piku has it.

``ssh piku@host ps myapp`` runs ``piku ps myapp``. Each command parses its
words, calls the daemon through ``control.client``, renders with
``output.format_*`` and returns; ``main()`` is the one error boundary, where
a PikudError becomes ``Error: ...`` and exit status 1.

Every ssh command pays this module's import time, so it imports click, the
stdlib and pikud's stdlib-only modules, nothing else (no aiohttp).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterable
from contextlib import closing
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import click

from pikud.control.client import Client
from pikud.errors import PikudError
from pikud.output import format_apps, format_cloudflare, format_env, format_log_line, format_ps
from pikud.paths import LAYOUT, Paths
from pikud.sshcommand import FLAG, ssh_words

F = TypeVar("F", bound=Callable[..., Any])

# Deploys and restarts wait for readiness inside the daemon: allow them time.
LONG_TIMEOUT = 600.0


def _client(timeout: float | None = 30) -> Client:
    return Client(Paths.from_env().socket, timeout=timeout)


def _app_path(app: str, *rest: str) -> str:
    return "/".join(["/apps", quote(app, safe=""), *rest])


def _color() -> bool:
    """ANSI only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return sys.stdout.isatty() and not os.environ.get("NO_COLOR")


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print the API's data as JSON.")(func)


def _print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2))


def _emit(data: Any, as_json: bool, render: Callable[[Any], str]) -> None:
    """The API's data as JSON, or rendered for people."""
    if as_json:
        _print_json(data)
    else:
        click.echo(render(data))


def _pairs(items: Iterable[str], what: str, param: str) -> list[tuple[str, str]]:
    """Split ``K=V`` words; a word without ``=`` or with an empty K is a usage error."""
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not {what}", param_hint=param)
        pairs.append((key, value))
    return pairs


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def piku(ctx: click.Context) -> None:
    """pikud's command line: apps, config, processes and logs.

    From your machine: ssh piku@HOST COMMAND [APP] [ARGS...]
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@piku.command("help")
@click.argument("command", required=False)
@click.pass_context
def help_(ctx: click.Context, command: str | None) -> None:
    """Show this help, or one COMMAND's."""
    group = ctx.parent
    assert group is not None
    if command is None:
        click.echo(group.get_help())
        return
    sub = piku.get_command(ctx, command)
    if sub is None:
        raise click.UsageError(f"No such command {command!r}.", ctx)
    click.echo(sub.get_help(click.Context(sub, info_name=command, parent=group)))


@piku.command("apps")
@json_option
def apps(as_json: bool) -> None:
    """List apps; * marks the running ones."""
    data = _client().request("GET", "/apps")
    _emit(data, as_json, lambda d: format_apps(d["apps"], _color(), d.get("problems", ())))


@piku.command("config")
@click.argument("app")
@json_option
def config(app: str, as_json: bool) -> None:
    """Show APP's settings (the overrides in envs/APP/ENV)."""
    data = _client().request("GET", _app_path(app, "config"))
    _emit(data, as_json, lambda d: format_env(d["config"]))


@piku.command("config:get")
@click.argument("app")
@click.argument("key")
@json_option
def config_get(app: str, key: str, as_json: bool) -> None:
    """Print the value of one of APP's settings."""
    settings = _client().request("GET", _app_path(app, "config"))["config"]
    if key not in settings:
        raise click.ClickException(f"{key} is not set for {app}")
    _emit({key: settings[key]}, as_json, lambda d: str(d[key]))


def _change_config(app: str, body: dict[str, Any], as_json: bool) -> None:
    """Write the overrides; pikud restarts what they change (unless PIKU_AUTO_RESTART=false)."""
    client = _client(LONG_TIMEOUT)
    data = client.request("POST", _app_path(app, "config"), body)
    if as_json:
        _print_json(data)
        return
    for key, value in body.get("set", {}).items():
        click.echo(f"-----> Setting {key}={value} for {app}")
    for key in body.get("unset", []):
        click.echo(f"-----> Unsetting {key} for {app}")
    click.echo(format_ps(client.request("GET", _app_path(app)), _color()))


@piku.command("config:set")
@click.argument("app")
@click.argument("settings", nargs=-1, required=True)
@json_option
def config_set(app: str, settings: tuple[str, ...], as_json: bool) -> None:
    """Set APP's settings KEY=VALUE ... and apply them.

    The words are joined and shell-split again, so quoting survives ssh:
    piku config:set app 'GREETING="hello world"'.
    """
    joined = " ".join(settings)
    try:
        words = shlex.split(joined)
    except ValueError as exc:
        raise click.BadParameter(f"cannot split {joined!r}: {exc}", param_hint="SETTINGS") from None
    pairs = _pairs(words, "KEY=VALUE", "SETTINGS")
    _change_config(app, {"set": dict(pairs)}, as_json)


@piku.command("config:unset")
@click.argument("app")
@click.argument("keys", nargs=-1, required=True)
@json_option
def config_unset(app: str, keys: tuple[str, ...], as_json: bool) -> None:
    """Remove APP's settings KEY ... and apply the change."""
    for key in keys:
        if "=" in key:
            raise click.BadParameter(f"{key!r} is not a KEY", param_hint="KEYS")
    _change_config(app, {"unset": list(keys)}, as_json)


@piku.command("config:live")
@click.argument("app")
@json_option
def config_live(app: str, as_json: bool) -> None:
    """Show the environment APP's processes get."""
    data = _client().request("GET", _app_path(app, "config", "live"))
    _emit(data, as_json, lambda d: format_env(d["env"]))


def _lifecycle(name: str, done: str, doc: str) -> None:
    """Register one ``POST /apps/APP/<name>`` command that prints the ps table."""

    @piku.command(name, help=doc)
    @click.argument("app")
    @json_option
    def command(app: str, as_json: bool) -> None:
        detail = _client(LONG_TIMEOUT).request("POST", _app_path(app, name))
        _emit(detail, as_json, lambda d: f"-----> {app} {done}\n{format_ps(d, _color())}")


_lifecycle("restart", "restarted", "Restart APP's processes, one by one.")
_lifecycle("stop", "stopped", "Stop APP's processes (it stays stopped until start).")
_lifecycle("start", "started", "Start APP's processes.")


@piku.command("destroy")
@click.argument("app")
@json_option
def destroy(app: str, as_json: bool) -> None:
    """Remove APP (its data and cache are kept).

    Removes the code, repo, env, logs and nginx files; data/APP and
    cache/APP stay.
    """
    data = _client(LONG_TIMEOUT).request("DELETE", _app_path(app))
    if as_json:
        _print_json(data)
        return
    for path in data["removed"]:
        click.echo(f"-----> Removed {path}")
    for path in data["kept"]:
        click.echo(f"-----> Kept {path}")
    click.echo(f"-----> {app} destroyed; its data and cache were kept (remove them by hand if unwanted)")


@piku.command("logs")
@click.argument("app")
@click.argument("kind", required=False)
@click.option("-n", "--lines", default=20, show_default=True, type=click.IntRange(min=0),
              help="How many past lines to show.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Keep printing new lines.")
@json_option
def logs(app: str, kind: str | None, lines: int, follow: bool, as_json: bool) -> None:
    """Show APP's latest log lines, then follow them.

    KIND limits them to one Procfile kind; Ctrl-C stops following. With
    --json each line is printed as one JSON object (NDJSON).
    """
    query = {"lines": lines, **({"kind": kind} if kind else {}), **({"follow": 1} if follow else {})}
    path = f"{_app_path(app, 'logs')}?{urlencode(query)}"
    color, width = _color(), 0

    def show(line: dict[str, Any]) -> None:
        nonlocal width
        width = max(width, len(str(line["source"])))
        click.echo(json.dumps(line) if as_json else format_log_line(line, color, width))

    if not follow:
        past = _client().request("GET", path)["lines"]
        width = max((len(str(line["source"])) for line in past), default=0)
        for line in past:
            show(line)
        return
    try:
        with closing(_client().stream("GET", path)) as stream:
            for line in stream:
                if "line" in line:
                    show(line)
    except KeyboardInterrupt:
        return


@piku.command("ps")
@click.argument("app")
@json_option
def ps(app: str, as_json: bool) -> None:
    """Show APP's processes and their live state.

    One row per process: state, pid, uptime, restarts, last exit, memory.
    """
    detail = _client().request("GET", _app_path(app))
    _emit(detail, as_json, lambda d: format_ps(d, _color()))


@piku.command("ps:scale")
@click.argument("app")
@click.argument("counts", nargs=-1, required=True)
@json_option
def ps_scale(app: str, counts: tuple[str, ...], as_json: bool) -> None:
    """Set how many processes of each kind APP runs.

    Arguments are KIND=N with N >= 0, e.g. piku ps:scale app web=2 worker=0.
    """
    scaling: dict[str, int] = {}
    for kind, n in _pairs(counts, "KIND=N", "COUNTS"):
        if not (n.isascii() and n.isdigit()):
            raise click.BadParameter(f"{kind}={n}: N must be a whole number >= 0", param_hint="COUNTS")
        if len(n.lstrip("0")) > 9:      # far above any ceiling; int() refuses 4,301 digits
            raise click.BadParameter(f"{kind}={n[:12]}...: N is too large", param_hint="COUNTS")
        if kind in scaling:
            raise click.BadParameter(f"{kind} is given twice", param_hint="COUNTS")
        scaling[kind] = int(n)
    detail = _client(LONG_TIMEOUT).request("POST", _app_path(app, "scale"), {"scaling": scaling})
    _emit(detail, as_json, lambda d: f"-----> {app} scaled\n{format_ps(d, _color())}")


@piku.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("app")
@click.argument("cmd", nargs=-1, type=click.UNPROCESSED)
def run(app: str, cmd: tuple[str, ...]) -> None:
    """Run CMD in APP's directory with its live environment.

    Use ssh -t (piku -t run ...) for an interactive tty.
    """
    if not cmd:
        raise click.UsageError("no command given: piku run APP CMD...")
    live = _client().request("GET", _app_path(app, "config", "live"))
    try:
        os.chdir(live["cwd"])
    except OSError as exc:
        raise click.ClickException(f"cannot enter {live['cwd']}: {exc.strerror}") from None
    sys.stdout.flush()
    try:
        os.execvpe("/bin/sh", ["/bin/sh", "-c", " ".join(cmd)], live["env"])
    except OSError as exc:
        raise click.ClickException(f"cannot run /bin/sh: {exc.strerror}") from None


@piku.command("setup")
@json_option
def setup(as_json: bool) -> None:
    """Create the directory layout under PIKU_ROOT.

    Needs no daemon; safe to run again.
    """
    paths = Paths.from_env()
    try:
        paths.create()
    except OSError as exc:
        raise click.ClickException(f"cannot create the layout under {paths.root}: {exc}") from None
    dirs = [str(paths.root / name) for name in LAYOUT]
    _emit({"root": str(paths.root), "dirs": dirs}, as_json,
          lambda d: "\n".join(f"-----> {path}" for path in d["dirs"]))


@piku.command("setup:ssh")
@click.argument("keyfile", type=click.File("rb"))
@click.option("--name", help="Who the key belongs to (default: the key's comment).")
@json_option
def setup_ssh(keyfile: Any, name: str | None, as_json: bool) -> None:
    """Allow a public key (KEYFILE, - for stdin) to use piku.

    The key goes into ~/.ssh/authorized_keys with a forced command that runs
    this piku, so its holder can only run piku commands.
    """
    # Imported here: only this command needs hashing and temp files.
    from pikud.paths import cli_argv
    from pikud.sshkeys import add_authorized_key, authorized_line, key_name, parse_public_key

    key = parse_public_key(keyfile.read().decode("utf-8", "replace"))
    owner = key_name(name, key)
    target = Path.home() / ".ssh" / "authorized_keys"
    try:
        root = Path(os.environ["PIKU_ROOT"]) if os.environ.get("PIKU_ROOT") else None
        line = authorized_line(key, owner, cli_argv(), root)
        added = add_authorized_key(target, key, line)
    except OSError as exc:
        raise click.ClickException(f"cannot update {target}: {exc}") from None
    result = {"fingerprint": key.fingerprint, "name": owner, "file": str(target), "added": added}
    if added:
        message = f"-----> Added key {key.fingerprint} ({owner}) to {target}"
    else:
        message = f"-----> Key {key.fingerprint} is already in {target}; nothing changed"
    _emit(result, as_json, lambda d: message)


@piku.command("cloudflare:refresh")
@json_option
def cloudflare_refresh(as_json: bool) -> int:
    """Download Cloudflare's address ranges for NGINX_CLOUDFLARE_ACL.

    Every list must be valid, or nothing changes. When the ranges changed,
    the nginx site of each running app that sets NGINX_CLOUDFLARE_ACL is
    re-published; exit status 1 if one of them failed.
    """
    data = _client(LONG_TIMEOUT).request("POST", "/cloudflare/refresh")
    _emit(data, as_json, lambda d: format_cloudflare(d, _color()))
    return 1 if any(entry["site"] == "failed" for entry in data["apps"]) else 0


def main(argv: list[str] | None = None) -> int:
    """Run one command; the only place errors become messages and exit codes.

    ``piku --ssh-command`` (sshd's forced command) runs the words of
    SSH_ORIGINAL_COMMAND, split without any expansion (``sshcommand``).
    """
    importlib.import_module("pikud.cli_deploy")     # the push path's commands join the group
    args = sys.argv[1:] if argv is None else list(argv)
    if args == [FLAG]:
        args = ssh_words(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    try:
        code = piku.main(args=args, prog_name="piku", standalone_mode=False)
    except PikudError as exc:
        click.echo(f"Error: {exc}", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted!", err=True)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    # Run the importable module, so that pikud.cli_deploy registers on the same group.
    from pikud.cli import main as importable_main
    raise SystemExit(importable_main())
