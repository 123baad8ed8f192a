"""The `piku` commands about an app's cron jobs: cron and cron:run (click + stdlib only)."""

from __future__ import annotations

from typing import Any

import click

from pikud.cli.common import app_path, client, emit, json_option
from pikud.output import format_table


@click.command("cron")
@click.argument("app")
@json_option
def cron(app: str, as_json: bool) -> None:
    """List APP's cron jobs: schedule, command, last run, next run."""
    data = client().request("GET", app_path(app, "cron"))

    def render(d: dict[str, Any]) -> str:
        rows = []
        for job in d["jobs"]:
            last = job["last_run"]
            done = (f"{last['started'][:19]} {last['status']} ({last['duration']:.1f}s)"
                    if last and last.get("duration") is not None else
                    f"{last['started'][:19]} {last['status']}" if last else "-")
            rows.append([job["kind"], job["schedule"], job["command"], done,
                         (job["next_run"] or "-")[:19] + (" (running)" if job["running"] else "")])
        if not rows:
            return f"{app} has no cron entries"
        return format_table(["JOB", "SCHEDULE", "COMMAND", "LAST RUN", "NEXT RUN"], rows)
    emit(data, as_json, render)


@click.command("cron:run")
@click.argument("app")
@click.argument("kind")
@json_option
def cron_run(app: str, kind: str, as_json: bool) -> None:
    """Run APP's cron job KIND now (its output goes to logs/APP/KIND.log)."""
    data = client().request("POST", app_path(app, "cron", kind, "run"))
    emit(data, as_json, lambda d: f"-----> {app}:{kind} " + (
        "queued behind the run in progress" if d.get("queued") else f"started at {d['started']}"))
