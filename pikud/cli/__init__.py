"""The `piku` command: sshd's forced command, as piku has it.

``ssh piku@host ps myapp`` runs ``piku ps myapp``. Each command parses its
words, calls the daemon through ``control.client``, renders with
``output.format_*`` and returns; ``main()`` is the one error boundary, where
a PikudError becomes ``Error: ...`` and exit status 1.

The commands live in one module per group (``processes``, ``env``, ``jobs``,
``push``, ``host``, ``access``) and share ``common``; this module registers every one of
them on the group by name, so importing ``pikud.cli`` gives the whole command
set and every import it needs. Every ssh command pays that import time, so
the package imports click, the stdlib and pikud's stdlib-only modules,
nothing else (no aiohttp).
"""

from __future__ import annotations

import os
import sys

import click

from pikud.cli.access import access, access_grant, access_revoke, audit
from pikud.cli.env import config, config_get, config_live, config_set, config_unset
from pikud.cli.host import cloudflare_refresh, scp, setup, setup_ssh, sftp, status, update
from pikud.cli.jobs import cron, cron_run
from pikud.cli.processes import apps, destroy, logs, ps, ps_scale, restart, run, start, stop
from pikud.cli.push import deploy, git_hook, git_receive_pack, git_upload_pack, releases, rollback
from pikud.errors import PikudError
from pikud.sshcommand import FLAG, ssh_words, subsystem_words

__all__ = ["main", "piku"]


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.pass_context
def piku(ctx: click.Context) -> None:
    """pikud's command line: apps, config, processes and logs.

    From your machine: ssh piku@HOST COMMAND [APP] [ARGS...]
    """
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


@click.command("help")
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


for _command in (
    help_,
    apps, ps, ps_scale, start, stop, restart, destroy, logs, run,
    config, config_get, config_set, config_unset, config_live,
    deploy, releases, rollback, git_receive_pack, git_upload_pack, git_hook,
    cron, cron_run,
    access, access_grant, access_revoke, audit,
    status, setup, setup_ssh, cloudflare_refresh, scp, sftp, update,
):
    piku.add_command(_command)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the only place errors become messages and exit codes.

    ``piku --ssh-command`` (sshd's forced command) runs the words of
    SSH_ORIGINAL_COMMAND, split without any expansion, and an sftp subsystem
    request as ``sftp`` (``sshcommand``).
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args == [FLAG]:
        args = ssh_words(os.environ.get("SSH_ORIGINAL_COMMAND", ""))
    args = subsystem_words(args)        # older forced commands pass the words as arguments
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
