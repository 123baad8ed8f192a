"""The words of an ssh command, as sshd's forced command hands it over (stdlib only).

sshd puts what the client asked for in ``SSH_ORIGINAL_COMMAND``. The forced
command written by earlier versions passed it to a shell unquoted, and the
shell split it on blanks and then expanded globs: ``ssh piku@host ps
'/etc/*'`` listed /etc in the error. ``piku --ssh-command`` reads the
variable itself and splits it on the same blanks, with no expansion at all.
"""

# Design notes:
# - Why not shlex: the old form never removed quotes (an unquoted $VAR is only
#   field-split and globbed), and piku's commands rely on that. config:set and
#   run join their words and split them again, so `config:set app 'K="a b"'`
#   and `run app echo 'a b'` work over ssh; shlex would take the quotes off
#   before they got there. Splitting on the shell's default IFS keeps every
#   word what it was, minus the expansion.
# - An SFTP subsystem request (scp's default since OpenSSH 9, so the stock
#   client's `download`) reaches a forced command with SSH_ORIGINAL_COMMAND set
#   to the server's `Subsystem sftp` line, e.g. /usr/lib/openssh/sftp-server.
#   That is read as pikud's `sftp` command, which starts a fixed sftp-server:
#   the path in the words is never run, since an exec request can send any.

from __future__ import annotations

import re

SFTP_COMMAND = "sftp"
"""The piku command that serves an SFTP subsystem request."""

FLAG = "--ssh-command"
"""The forced command's only argument: take the words from SSH_ORIGINAL_COMMAND."""

_IFS = re.compile("[ \t\n]+")


def ssh_words(command: str) -> list[str]:
    """``command`` split on blanks as the shell's default IFS does; nothing expanded."""
    return [word for word in _IFS.split(command) if word]


def subsystem_words(words: list[str]) -> list[str]:
    """``words`` with sshd's sftp subsystem line (``.../sftp-server ARGS`` or
    ``internal-sftp ARGS``) read as the ``sftp`` command; other words unchanged."""
    if words and (words[0].rpartition("/")[2] == "sftp-server" or words[0] == "internal-sftp"):
        return [SFTP_COMMAND, *words[1:]]
    return words
