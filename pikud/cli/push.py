"""The `piku` commands of the push path: git-receive-pack, git-upload-pack and
the pre-receive hook that sshd and git run, and deploy, releases and rollback
(click + stdlib only; ``deploy/receive.py`` does the repository work)."""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import click

from pikud.cli.common import allowed, app_path, client, color, emit, json_option, print_json
from pikud.errors import PikudError
from pikud.output import format_ps, format_table
from pikud.paths import Paths, cli_argv

TICKET = "PIKU_PUSH_TICKET"
"""How git-receive-pack hands its push ticket to the hook (git passes its environment)."""


def _progress(path: str, body: dict[str, Any] | None, as_json: bool) -> Any:
    """POST with ?progress=1, echoing each progress line; returns the final data.

    A build takes as long as it takes, so the stream has no timeout.
    """
    for item in client(None).stream("POST", f"{path}?progress=1", body):
        if "progress" in item:
            if as_json:
                print_json(item)
            else:
                click.echo(item["progress"])
        elif item.get("end"):
            return item.get("data")
    raise PikudError("pikud ended the deploy stream without a result")


@click.command("deploy")
@click.argument("app")
@json_option
def deploy(app: str, as_json: bool) -> None:
    """Rebuild APP's current release and switch to it (or re-read apps/APP)."""
    detail = _progress(app_path(app, "deploy"), None, as_json)
    emit(detail, as_json, lambda d: f"-----> {app} deployed\n{format_ps(d, color())}")


@click.command("releases")
@click.argument("app")
@json_option
def releases(app: str, as_json: bool) -> None:
    """List APP's releases, newest first; * marks the live one."""
    data = client().request("GET", app_path(app, "releases"))

    def render(d: dict[str, Any]) -> str:
        rows = [[("*" if r["current"] else " ") + str(r["number"]), r["revision"][:12],
                 time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["time"])),
                 r["pusher"] or "-", r["runtime"] or "-", r["ref"] or "-"]
                for r in d["releases"]]
        if not rows:
            return f"{app} has no releases yet: git push to it first"
        return format_table(["RELEASE", "REVISION", "DEPLOYED", "BY", "RUNTIME", "REF"], rows)
    emit(data, as_json, render)


@click.command("rollback")
@click.argument("app")
@click.argument("release", type=click.IntRange(min=1), required=False)
@json_option
def rollback(app: str, release: int | None, as_json: bool) -> None:
    """Switch APP back to RELEASE (default: the previous one) without rebuilding."""
    body = {"release": release} if release is not None else {}
    detail = _progress(app_path(app, "rollback"), body, as_json)
    emit(detail, as_json, lambda d: f"-----> {app} is on release {d['release']}\n"
         f"{format_ps(d, color())}")


@click.command("git-receive-pack", hidden=True)
@click.argument("path")
def git_receive_pack(path: str) -> None:
    """sshd's `git push`: ask pikud for a push ticket (the key needs deploy on APP), make
    the bare repo on first push, then hand over to git; the hook spends the ticket."""
    # Imported here, as in the other git commands: receive.py brings the app-spec
    # parsers, which no other command needs and every ssh command would pay for.
    from pikud.deploy.receive import app_from_git_path, ensure_repo
    app = app_from_git_path(path)
    ticket = client().request("POST", app_path(app, "push"))["ticket"]
    repo = ensure_repo(Paths.from_env(), app, cli_argv())
    os.execvpe("git", ["git", "receive-pack", str(repo)], {**os.environ, TICKET: ticket})


@click.command("git-upload-pack", hidden=True)
@click.argument("path")
def git_upload_pack(path: str) -> None:
    """sshd's `git clone`/`fetch` of an app's repo."""
    from pikud.deploy.receive import app_from_git_path
    app = app_from_git_path(path)
    allowed("git-upload-pack", app)
    repo = Paths.from_env().repo(app)
    if not (repo / "HEAD").exists():
        raise PikudError(f"no repository for app {app!r}: push to it first")
    os.execvp("git", ["git", "upload-pack", str(repo)])


@click.command("git-hook", hidden=True)
@click.argument("app")
def git_hook(app: str) -> None:
    """The repo's pre-receive hook: deploy the pushed revision; a failure rejects the push."""
    from pikud.deploy.receive import point_head_at, pushed_revision, quarantine_env
    push = pushed_revision(sys.stdin.read())
    if push is None:
        return
    body = {"revision": push.new, "ref": push.ref, "old": push.old,
            "pusher": os.environ.get("NAME", ""),
            "fingerprint": os.environ.get("FINGERPRINT", ""), "git_env": quarantine_env(),
            "ticket": os.environ.get(TICKET, "")}
    detail = _progress(app_path(app, "deploy"), body, False)
    point_head_at(push.ref)
    click.echo(f"-----> {app} is live: release {detail['release']}")
    click.echo(format_ps(detail, False))
