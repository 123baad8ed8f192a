"""The `piku` commands about the host rather than one app: status, setup, setup:ssh,
cloudflare:refresh, scp, sftp and update (click + stdlib only)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import click

from pikud.cli.common import LONG_TIMEOUT, allowed, client, color, emit, json_option, print_json
from pikud.output import format_cloudflare, format_status
from pikud.paths import LAYOUT, Paths, cli_argv


@click.command("status")
@json_option
def status(as_json: bool) -> None:
    """Show pikud itself: version, pid, uptime, how it last started (boot, re-exec,
    adoption), apps and processes by state, and its last errors."""
    data = client().request("GET", "/status")
    emit(data, as_json, lambda d: format_status(d, color()))


@click.command("setup")
@click.option("--fix", is_flag=True,
              help="Let nginx's workers into PIKU_ROOT (chmod o+x where they are kept out) "
                   "and give the apps' sockets folder to their group (as root).")
@json_option
def setup(fix: bool, as_json: bool) -> None:
    """Create the directory layout under PIKU_ROOT; check that nginx can serve from it.

    Needs no daemon; safe to run again. nginx's workers (its config's `user`)
    must pass through PIKU_ROOT and the folders above it (a 0700 home folder,
    Debian 12's default, keeps them out), and connect to the apps' sockets in
    nginx/sockets through its group (2750, setgid; only root can chgrp it):
    the fix is printed, and applied with --fix or when confirmed on a terminal.
    """
    # Imported here: only this command looks at nginx.
    from pikud.nginxaccess import (
        blocked,
        distinct,
        fix_all,
        installed_worker_user,
        layout_targets,
        sockets_blocked,
    )

    allowed("setup")
    paths = Paths.from_env()
    try:
        paths.create()
    except OSError as exc:
        raise click.ClickException(f"cannot create the layout under {paths.root}: {exc}") from None
    user = installed_worker_user()
    found = distinct([*blocked(layout_targets(paths.root), user),
                      *sockets_blocked(paths.sockets, user)]) if user else []
    lines = [f"-----> {paths.root / name}" for name in LAYOUT]
    lines += [f"-----> Warning: {item.advice()}" for item in found]
    if found and not fix and not as_json and sys.stdin.isatty():
        click.echo("\n".join(lines))
        lines = []
        fix = click.confirm("Apply the fixes above?", default=False)
    fixed: list[str] = []
    if found and fix:
        try:
            fixed = fix_all(found)
        except OSError as exc:
            raise click.ClickException(f"cannot let nginx in: {exc}") from None
        lines += [f"-----> Fixed: {command}" for command in fixed]
    data = {"root": str(paths.root), "dirs": [str(paths.root / name) for name in LAYOUT],
            "nginx_user": user, "fixes": [item.command for item in found], "fixed": fixed}
    if as_json:
        print_json(data)
    elif lines:
        click.echo("\n".join(lines))


@click.command("setup:ssh")
@click.argument("keyfile", type=click.File("rb"))
@click.option("--name", help="Who the key belongs to (default: the key's comment).")
@click.option("--replace", is_flag=True,
              help="Put the key in place of the key that has this name, or rename a key "
                   "that is already in.")
@json_option
def setup_ssh(keyfile: Any, name: str | None, replace: bool, as_json: bool) -> None:
    """Allow a public key (KEYFILE, - for stdin) to use piku.

    The key goes into ~/.ssh/authorized_keys with a forced command that runs
    this piku, so its holder can only run piku commands. Names are unique:
    access rules and the audit log know keys by name.
    """
    # Imported here: only this command needs hashing and temp files.
    from pikud.sshkeys import add_authorized_key, authorized_line, key_name, parse_public_key

    key = parse_public_key(keyfile.read().decode("utf-8", "replace"))
    owner = key_name(name, key)
    allowed("setup:ssh")
    target = Path.home() / ".ssh" / "authorized_keys"
    try:
        root = Path(os.environ["PIKU_ROOT"]) if os.environ.get("PIKU_ROOT") else None
        line = authorized_line(key, owner, cli_argv(), root)
        added = add_authorized_key(target, key, line, owner, replace)
    except OSError as exc:
        raise click.ClickException(f"cannot update {target}: {exc}") from None
    result = {"fingerprint": key.fingerprint, "name": owner, "file": str(target), "added": added}
    if added:
        message = f"-----> Added key {key.fingerprint} ({owner}) to {target}"
    else:
        message = f"-----> Key {key.fingerprint} is already in {target}; nothing changed"
    emit(result, as_json, lambda d: message)


@click.command("cloudflare:refresh")
@json_option
def cloudflare_refresh(as_json: bool) -> int:
    """Download Cloudflare's address ranges for NGINX_CLOUDFLARE_ACL.

    Every list must be valid, or nothing changes. When the ranges changed,
    the nginx site of each running app that sets NGINX_CLOUDFLARE_ACL is
    re-published; exit status 1 if one of them failed.
    """
    data = client(LONG_TIMEOUT).request("POST", "/cloudflare/refresh")
    emit(data, as_json, lambda d: format_cloudflare(d, color()))
    return 1 if any(entry["site"] == "failed" for entry in data["apps"]) else 0


@click.command("scp", context_settings={"ignore_unknown_options": True,
                                        "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def scp(args: tuple[str, ...]) -> None:
    """scp's own server side, for the piku client's `download` (scp -f PATH).

    As with piku, whatever scp is asked for passes through. The old forced
    command's shell expanded a leading ~/; no shell sees the words now, so
    that is done here.
    """
    allowed("scp")
    home = os.path.expanduser("~")
    argv = ["scp", *(home + arg[1:] if arg.startswith("~/") else arg for arg in args)]
    try:
        os.execvp("scp", argv)
    except OSError as exc:
        raise click.ClickException(f"cannot run scp: {exc.strerror}") from None


SFTP_SERVERS = ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                "/usr/libexec/sftp-server", "/usr/lib/ssh/sftp-server")
"""Where Debian, Fedora, BSDs and Arch install OpenSSH's sftp-server."""


@click.command("sftp", context_settings={"ignore_unknown_options": True,
                                         "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sftp(args: tuple[str, ...]) -> None:
    """OpenSSH's sftp-server, for scp's default protocol since OpenSSH 9 (the piku
    client's `download`); sshd's `Subsystem sftp` line arrives as this command."""
    allowed("sftp")
    program = next((path for path in SFTP_SERVERS if os.access(path, os.X_OK)), None)
    if program is None:
        raise click.ClickException(f"no sftp-server here (looked in {', '.join(SFTP_SERVERS)}); "
                                   "use `scp -O` for the legacy scp protocol")
    try:
        os.execv(program, [program, *args])
    except OSError as exc:
        raise click.ClickException(f"cannot run {program}: {exc.strerror}") from None


@click.command("update")
def update() -> None:
    """piku's self-update over ssh; pikud is upgraded on the server instead."""
    raise click.ClickException(
        "pikud does not update itself over ssh: on the server, upgrade the pikud package "
        "(pip install --upgrade pikud in its virtualenv) and restart the pikud service")
