"""The `piku` commands about who may do what: access, access:grant, access:revoke and
audit (click + stdlib only). pikud applies the rules; these only show and change them."""

from __future__ import annotations

from urllib.parse import quote, urlencode

import click

from pikud.cli.common import client, emit, json_option
from pikud.output import format_access, format_audit

ROLES = click.Choice(["read", "deploy", "admin"])


def _grant_path(name: str, app: str) -> str:
    return f"/access/{quote(name, safe='')}/{quote(app, safe='')}"


@click.command("access")
@json_option
def access(as_json: bool) -> None:
    """List the access rules (the grants on the apps you are admin of)."""
    emit(client().request("GET", "/access"), as_json, format_access)


@click.command("access:grant")
@click.argument("name")
@click.argument("app")
@click.argument("role", type=ROLES)
@json_option
def access_grant(name: str, app: str, role: str, as_json: bool) -> None:
    """Give the key NAME the ROLE on APP ('*': every app).

    read: see the app (ps, logs, config, releases, cron). deploy: also push,
    restart, scale, config:set, rollback, cron:run. admin: also destroy, run,
    access. The first grant ends the open mode: keys without a grant can do
    nothing from then on.
    """
    data = client().request("PUT", _grant_path(name, app), {"role": role})
    emit(data, as_json, lambda d: f"-----> {name} is {role} on {app}\n{format_access(d)}")


@click.command("access:revoke")
@click.argument("name")
@click.argument("app")
@json_option
def access_revoke(name: str, app: str, as_json: bool) -> None:
    """Take back the grant of the key NAME on APP ('*': the grant on every app)."""
    data = client().request("DELETE", _grant_path(name, app))
    emit(data, as_json, lambda d: f"-----> {name} has no grant on {app} now\n{format_access(d)}")


@click.command("audit")
@click.argument("app", required=False)
@click.option("-n", "--lines", default=50, show_default=True, type=click.IntRange(min=0),
              help="How many entries to show.")
@json_option
def audit(app: str | None, lines: int, as_json: bool) -> None:
    """Show the audit log: every change and every refusal, oldest first (APP: its own)."""
    query = urlencode({"lines": lines, **({"app": app} if app else {})})
    data = client().request("GET", f"/audit?{query}")
    emit(data, as_json, lambda d: format_audit(d["lines"]))
