"""The `piku` commands about an app's settings: config, config:get, config:set,
config:unset and config:live (click + stdlib only)."""

from __future__ import annotations

import shlex
from typing import Any

import click

from pikud.cli.common import (
    LONG_TIMEOUT,
    app_path,
    client,
    color,
    emit,
    json_option,
    pairs,
    print_json,
)
from pikud.output import format_env, format_ps


@click.command("config")
@click.argument("app")
@json_option
def config(app: str, as_json: bool) -> None:
    """Show APP's settings (the overrides in envs/APP/ENV)."""
    data = client().request("GET", app_path(app, "config"))
    emit(data, as_json, lambda d: format_env(d["config"]))


@click.command("config:get")
@click.argument("app")
@click.argument("key")
@json_option
def config_get(app: str, key: str, as_json: bool) -> None:
    """Print the value of one of APP's settings (nothing, and exit 0, when unset, as piku)."""
    settings = client().request("GET", app_path(app, "config"))["config"]
    if key not in settings and not as_json:
        return          # scripts test for an empty answer: piku's way
    emit({key: settings.get(key)}, as_json, lambda d: str(d[key]))


def _change_config(app: str, body: dict[str, Any], as_json: bool) -> None:
    """Write the overrides; pikud restarts what they change (unless PIKU_AUTO_RESTART=false)."""
    daemon = client(LONG_TIMEOUT)
    data = daemon.request("POST", app_path(app, "config"), body)
    if as_json:
        print_json(data)
        return
    for key, value in body.get("set", {}).items():
        click.echo(f"-----> Setting {key}={value} for {app}")
    for key in body.get("unset", []):
        click.echo(f"-----> Unsetting {key} for {app}")
    click.echo(format_ps(daemon.request("GET", app_path(app)), color()))


@click.command("config:set")
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
    _change_config(app, {"set": dict(pairs(words, "KEY=VALUE", "SETTINGS"))}, as_json)


@click.command("config:unset")
@click.argument("app")
@click.argument("keys", nargs=-1, required=True)
@json_option
def config_unset(app: str, keys: tuple[str, ...], as_json: bool) -> None:
    """Remove APP's settings KEY ... and apply the change."""
    for key in keys:
        if "=" in key:
            raise click.BadParameter(f"{key!r} is not a KEY", param_hint="KEYS")
    _change_config(app, {"unset": list(keys)}, as_json)


@click.command("config:live")
@click.argument("app")
@json_option
def config_live(app: str, as_json: bool) -> None:
    """Show the environment APP's processes get."""
    data = client().request("GET", app_path(app, "config", "live"))
    emit(data, as_json, lambda d: format_env(d["env"]))
