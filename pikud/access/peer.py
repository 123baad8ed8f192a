"""Who is on the other end of pikud.sock: the peer's pid and uid, and whether pikud
started it.

As the piku user, apps run as the daemon's uid, so the uid check lets them
in; the pid tells them apart. (As root with app users, their uids are refused
first: control/guard.py.) pikud is a child subreaper (procman/children.py), so every process
it started, and every descendant of one, even one that daemonized, has pikud
among its ancestors while it lives. A process adopted after a crash of pikud
is not a descendant any more, but still carries PIKU_SPAWN_ID.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator

from pikud.procman.children import SPAWN_ID, stat_fields

MAX_DEPTH = 128         # ancestors walked at most: far deeper than any real process tree


def peer_credentials(sock: socket.socket) -> tuple[int, int]:
    """(pid, uid) of the process that connected ``sock`` (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, _ = struct.unpack("3i", creds)
    return pid, uid


def ancestors(pid: int) -> Iterator[int]:
    """The parent of ``pid``, its parent, and so on up to init (at most MAX_DEPTH)."""
    for _ in range(MAX_DEPTH):
        fields = stat_fields(pid)
        if fields is None:
            return
        pid = int(fields[1])
        if pid <= 1:
            return
        yield pid


def started_by_pikud(pid: int, daemon: int | None = None) -> bool:
    """Whether ``pid`` is a process the daemon (``daemon``, default: this process) started,
    or a descendant of one; the daemon itself is not."""
    daemon = os.getpid() if daemon is None else daemon
    if pid == daemon:
        return False
    if daemon in ancestors(pid):
        return True
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return b"\0" + SPAWN_ID.encode() + b"=" in b"\0" + f.read()
    except OSError:
        return False
