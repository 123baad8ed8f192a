"""Listening sockets owned by the daemon and handed to a process the systemd way.

A slot whose server can take an inherited socket (gunicorn, uvicorn, or a
``web`` app that asks with PIKU_LISTEN_FDS) gets a socket the daemon binds
and keeps for the slot's whole life: while its process boots or restarts
after a crash, connections wait in the socket's backlog instead of being
refused. The process finds it as fd 3 with LISTEN_FDS=1 and LISTEN_PID set
to its own pid (FACTS.md: gunicorn keeps such a socket on SIGTERM).
"""

from __future__ import annotations

import fcntl
import socket

FIRST_FD = 3                    # SD_LISTEN_FDS_START


def listen_tcp(port: int, backlog: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port``, kept off fd 3 so the hand-over can dup it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    if sock.fileno() <= FIRST_FD:
        high = socket.socket(fileno=fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10))
        sock.close()
        sock = high
    return sock


def hand_over(command: str, fd: int) -> list[str]:
    """argv that moves ``fd`` to fd 3 and sets LISTEN_FDS/LISTEN_PID, then runs ``command``.

    LISTEN_PID must be the pid of the program that reads it: ``$$`` is the
    shell's, which ``exec`` keeps, so ``command`` must exec its server. bash,
    because dash cannot name a descriptor above 9 in a redirection.
    """
    return ["/bin/bash", "-c", f"exec {FIRST_FD}<&{fd} {fd}<&-; LISTEN_FDS=1 LISTEN_PID=$$; "
            f"export LISTEN_FDS LISTEN_PID; {command}"]
