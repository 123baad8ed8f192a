"""The daemon's command line: `pikud serve [--loop L] [--http HOST:PORT]` and `pikud --version`.

Parsed by hand rather than with argparse: three options do not need it, and argparse
(with the gettext it imports) would stay in the long-lived daemon's memory, about 400 KiB
of its RSS. Errors and help follow argparse's conventions (exit 2, `pikud: error: ...`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

LOOPS = ("auto", "uvloop", "asyncio")

USAGE = ("usage: pikud [-h] [--version] serve [-h] [--loop {auto,uvloop,asyncio}] "
         "[--http HOST:PORT]")

HELP = f"""{USAGE}

The pikud daemon.

commands:
  serve                     run the daemon in the foreground

options of serve:
  --loop {{auto,uvloop,asyncio}}
                            event loop (default: auto, which is uvloop when the built-in
                            router serves HTTP, stock asyncio behind nginx)
  --http HOST:PORT          where the built-in router serves HTTP when there is no nginx
                            (default: $PIKU_HTTP_ADDRESS or 127.0.0.1:8080)

options:
  -h, --help                show this help and exit
  --version                 show pikud's version and exit
"""


class UsageError(Exception):
    """A command line pikud does not take; the message says what is wrong."""


class Serve(NamedTuple):
    loop: str
    http: str


class Exit(NamedTuple):
    """Nothing to serve: print ``text`` and leave with exit status 0."""
    text: str


def parse(argv: Sequence[str], version: str) -> Serve | Exit:
    """What ``argv`` (without the program name) asks for; UsageError names what is wrong."""
    args = list(argv)
    if not args:
        raise UsageError("a command is required: serve")
    first = args.pop(0)
    if first in ("-h", "--help"):
        return Exit(HELP)
    if first == "--version":
        return Exit(f"pikud {version}\n")
    if first != "serve":
        raise UsageError(f"unknown command or option {first!r} (the command is serve)")
    values = {"--loop": "auto",
              "--http": os.environ.get("PIKU_HTTP_ADDRESS", "127.0.0.1:8080")}
    while args:
        arg = args.pop(0)
        if arg in ("-h", "--help"):
            return Exit(HELP)
        name, equals, value = arg.partition("=")
        if name not in values:
            raise UsageError(f"serve: unknown option {arg!r}")
        if not equals:
            if not args:
                raise UsageError(f"serve: {name} needs a value")
            value = args.pop(0)
        values[name] = value
    if values["--loop"] not in LOOPS:
        raise UsageError(f"serve: --loop must be one of {', '.join(LOOPS)}, "
                         f"not {values['--loop']!r}")
    return Serve(values["--loop"], values["--http"])
