"""The app servers behind ``wsgi:`` and ``asgi:`` Procfile entries.

``wsgi: module:callable`` and ``asgi: module:app`` name a Python object; pikud
runs a production server for it from the app's own virtualenv, adding the
server to that environment when the app did not ask for it. granian is the
default (it serves both interfaces, and measured at or above uWSGI's
throughput, FACTS.md); ``PIKU_WSGI_SERVER=gunicorn`` and
``PIKU_ASGI_SERVER=uvicorn`` choose the others. piku's uWSGI settings map
onto the chosen server; the ones that mean nothing there are reported.
gunicorn and uvicorn serve a listening socket the daemon owns (fd 3,
LISTEN_FDS: a unix socket, or a loopback port with PIKU_UPSTREAM=tcp);
granian cannot take one, so it binds the unix socket (``--uds``) or the port
it is given, and an app that scales to zero (PIKU_IDLE_TIMEOUT) gets
gunicorn or uvicorn unless it chose a server.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pikud.appsettings import idle_setting
from pikud.convert import nonneg_int, positive_int
from pikud.errors import EnvError, ProcfileError

TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*(\(\))?")
CHOICES = {"wsgi": ("granian", "gunicorn"), "asgi": ("granian", "uvicorn")}
SERVER_KEY = {"wsgi": "PIKU_WSGI_SERVER", "asgi": "PIKU_ASGI_SERVER"}
# uWSGI settings with no meaning once uWSGI is gone: reported at deploy, never dropped silently.
IGNORED = ("UWSGI_ENABLE_THREADS", "UWSGI_GEVENT", "UWSGI_ASYNCIO", "UWSGI_INCLUDE_FILE",
           "UWSGI_LOG_X_FORWARDED_FOR")
# uWSGI settings pikud itself honours, whatever runs: scale to zero, log rotation.
HONOURED = ("UWSGI_IDLE", "UWSGI_LOG_MAXSIZE")


@dataclass(frozen=True)
class ServerCommand:
    command: str                    # a shell command (Procfile contract), exec'ing the server
    package: str                    # what must be installed in the app's environment
    notes: tuple[str, ...]          # settings reported as meaningless for this server
    inherits: bool = False          # serves the daemon's socket at fd 3 (LISTEN_FDS)
    backlog: int = 128


def server_name(kind: str, env: Mapping[str, str], on_demand: bool = False) -> str:
    """The server for ``kind``: the app's choice, else granian, else (on demand) one that inherits.

    Starting on demand needs the daemon's socket, which granian cannot take.
    """
    key = SERVER_KEY[kind]
    default, inheriting = CHOICES[kind]
    name = env.get(key) or (inheriting if on_demand else default)
    if name not in CHOICES[kind]:
        raise EnvError(f"{key} must be one of {', '.join(CHOICES[kind])}, got {name!r}", key=key)
    if on_demand and name == "granian":
        idle = idle_setting(env)
        raise EnvError(f"{key}: granian cannot take the daemon's socket, which {idle} needs "
                       f"to start the app on demand; use {inheriting} or unset {idle}", key=key)
    return name


def one_worker(kind: str, server: str, env: Mapping[str, str]) -> bool:
    """granian serving wsgi runs one worker unless UWSGI_PROCESSES asks for more: it served
    as much as uWSGI's 2 x 4 and weighed less (bench/appmem.py, README "Benchmarks")."""
    return server == "granian" and kind == "wsgi" and "UWSGI_PROCESSES" not in env


def server_workers(kind: str, server: str, env: Mapping[str, str]) -> int:
    """How many workers ``server`` runs beside its main process for a ``kind`` slot:
    UWSGI_PROCESSES, else two (one where ``one_worker``)."""
    if one_worker(kind, server, env):
        return 1
    return positive_int("UWSGI_PROCESSES", env.get("UWSGI_PROCESSES", "2"))


def slot_processes(kind: str, env: Mapping[str, str], on_demand: bool = False) -> int:
    """The processes one wsgi/asgi slot runs: its server's main process and its workers,
    as ``server_command`` starts them."""
    return 1 + server_workers(kind, server_name(kind, env, on_demand), env)


def server_command(kind: str, target: str, env: Mapping[str, str],
                   on_demand: bool = False, unix: bool = False) -> ServerCommand:
    """The command serving ``target`` for a ``wsgi``/``asgi`` kind on 127.0.0.1:$PORT, or
    (``unix``) on the unix socket $PIKU_SOCKET."""
    target = target.strip()
    if not TARGET.fullmatch(target):
        raise ProcfileError(f"{kind}: expected module:callable (like app:application), "
                            f"got {target!r}")
    server = server_name(kind, env, on_demand)
    workers = server_workers(kind, server, env)
    threads = positive_int("UWSGI_THREADS", env.get("UWSGI_THREADS", "4"))
    backlog = positive_int("UWSGI_LISTEN", env.get("UWSGI_LISTEN", "128"))
    max_requests = nonneg_int("UWSGI_MAX_REQUESTS", env.get("UWSGI_MAX_REQUESTS", "0"))
    notes = [key for key in IGNORED if key in env]
    # granian leaves a stale file in place (and then cannot bind): the daemon removes it
    # before each spawn. 0660 as an octal word: granian reads "660" as decimal.
    bind = (["--uds", '"$PIKU_SOCKET"', "--uds-permissions", "0660"] if unix
            else ["--host", "127.0.0.1", "--port", "$PORT"])
    if server == "granian":
        # A killed worker is replaced by granian's main (after 1 s) instead of taking the
        # main and the whole slot down with it: capacity drops by one worker, not to zero.
        argv = ["granian", "--interface", kind, *bind, "--workers", str(workers),
                "--backlog", str(max(backlog, 128)), "--no-ws" if kind == "wsgi" else "--ws",
                "--respawn-failed-workers", "--respawn-interval", "1"]
        if one_worker(kind, server, env):
            # One worker with two runtime (I/O) threads served as much as uWSGI's 2 x 4 and
            # weighed less than it once loaded, and 20 MiB less than two workers
            # (bench/appmem.py, README "Benchmarks"). UWSGI_PROCESSES asks for more.
            argv += ["--runtime-threads", "2"]
        if kind == "wsgi":
            argv += ["--blocking-threads", str(threads)]
        elif "UWSGI_THREADS" in env:
            notes.append("UWSGI_THREADS")
        if "UWSGI_MAX_REQUESTS" in env:
            notes.append("UWSGI_MAX_REQUESTS")       # granian recycles by time or memory only
        if "UWSGI_LISTEN" in env and backlog < 128:
            notes.append("UWSGI_LISTEN below 128 (granian's minimum; 128 is used)")
    elif server == "gunicorn":
        # Its socket comes from the daemon, the systemd way (LISTEN_FDS); never --bind fd://,
        # with which gunicorn unlinks the socket on stop (FACTS.md).
        argv = ["gunicorn", "--workers", str(workers), "--threads", str(threads),
                "--max-requests", str(max_requests), "--backlog", str(backlog),
                "--no-control-socket"]
    else:
        # uvicorn listens again on the socket it is given, with its own default (2048)
        argv = ["uvicorn", "--fd", "3", "--workers", str(workers), "--backlog", str(backlog)]
        if max_requests:
            argv += ["--limit-max-requests", str(max_requests)]
        if "UWSGI_THREADS" in env:
            notes.append("UWSGI_THREADS")
    words = " ".join(w if w in bind and "$" in w else shlex.quote(w) for w in argv)
    return ServerCommand(f"exec {words} {shlex.quote(target)}", server, tuple(notes),
                         inherits=server != "granian", backlog=backlog)


def servers_chosen(entries: Mapping[str, str], env: Mapping[str, str],
                   on_demand: bool = False) -> dict[str, str]:
    """The server each wsgi/asgi entry runs under, by kind (validated)."""
    return {kind: server_command(kind, entries[kind], env, on_demand).package
            for kind in CHOICES if kind in entries}


def ignored_settings(entries: Mapping[str, str], env: Mapping[str, str],
                     on_demand: bool = False) -> list[str]:
    """A warning for each uWSGI setting the chosen servers have no use for (validated).

    Without a wsgi or asgi entry no server runs, and only the HONOURED ones
    have a use.
    """
    if not any(kind in entries for kind in CHOICES):
        return [f"{key} has no meaning without a wsgi or asgi entry; it is ignored"
                for key in sorted(env) if key.startswith("UWSGI_") and key not in HONOURED]
    return [f"{key} has no meaning for the {kind} server pikud runs ({command.package}); "
            "it is ignored"
            for kind in CHOICES if kind in entries
            for command in [server_command(kind, entries[kind], env, on_demand)]
            for key in command.notes]


def servers_to_install(entries: Mapping[str, str], env: Mapping[str, str],
                       on_demand: bool = False) -> tuple[str, ...]:
    """The server packages a build adds for a Procfile's wsgi/asgi entries (validated).

    Both choices of a kind go in, so that PIKU_WSGI_SERVER, PIKU_ASGI_SERVER
    and PIKU_IDLE_TIMEOUT can change with config:set, without a rebuild.
    """
    chosen = servers_chosen(entries, env, on_demand)
    return tuple(sorted({name for kind in chosen for name in CHOICES[kind]}))


def check_installed(entries: Mapping[str, str], env: Mapping[str, str], on_demand: bool,
                    bin_dir: Path) -> None:
    """Raise when a chosen server is not in ``bin_dir``, as in a release built before it."""
    for kind, name in servers_chosen(entries, env, on_demand).items():
        if not (bin_dir / name).exists():
            key = SERVER_KEY[kind] if SERVER_KEY[kind] in env or not on_demand \
                else idle_setting(env)
            raise EnvError(f"{key}: the {kind} entry would run {name}, which this release's "
                           "environment was built without; deploy again (piku deploy APP) "
                           "to add it", key=key)
