"""How a Procfile command is run: ``/bin/sh -c``, exec'ing one simple program.

A Procfile command is a shell command by contract. When it is one simple
command that runs a program, the shell execs it, so the slot's process is the
program itself; anything else (pipes, lists, builtins, keywords) is left to
the shell, which then stays the slot's main process.
"""

from __future__ import annotations

import re

SHELL_SYNTAX = re.compile(r"[;&|()\n`]|^\s*\w+=")

# Words the shell runs itself with no program behind them: its keywords and its
# builtins (POSIX special and regular ones, and dash's and bash's own). ``exec``
# in front of one looks for a program of that name: ``exec exit 1`` fails with
# 127. Builtins that are programs too (true, echo, test, kill, pwd) may be exec'd.
SHELL_WORDS = frozenset([
    "!", "{", "}", "[[", "]]", "case", "do", "done", "elif", "else", "esac", "fi", "for",
    "function", "if", "in", "select", "then", "until", "while", ".", ":", "break", "continue",
    "eval", "exec", "exit", "export", "readonly", "return", "set", "shift", "times", "trap",
    "unset", "alias", "bg", "cd", "command", "fc", "fg", "getopts", "hash", "jobs", "local", "read",
    "source", "type", "ulimit", "umask", "unalias", "wait", "declare", "let", "typeset",
])


def shell_argv(command: str) -> list[str]:
    """``/bin/sh -c`` for a Procfile command, exec'ing it when it is one simple command
    that runs a program.

    dash does not exec the last command itself; without ``exec`` every slot
    would be a shell plus the app, with the shell's pid in ``ps`` and a
    ``kill`` of that pid orphaning the app.
    """
    words = command.split(maxsplit=1)
    compound = SHELL_SYNTAX.search(command) or not words or words[0] in SHELL_WORDS
    return ["/bin/sh", "-c", command if compound else f"exec {command}"]
