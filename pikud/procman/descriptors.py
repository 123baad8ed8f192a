"""The daemon's descriptor reserve: a spawn never takes the last free descriptors.

Each supervised process holds two descriptors in the daemon (its pidfd and
its log pipe), and stopping it opens one more per process of its tree. A
spawn is refused (EMFILE, as the kernel would) unless it leaves one free
descriptor per live child plus ``RESERVE``: whatever fails half-way, the
daemon can still stop what it started, answer its control socket and
restart other apps.
"""

from __future__ import annotations

import errno
import os

from pikud.fds import open_descriptors, open_files_limit

RESERVE = 64            # for the control socket, log files, /proc reads, nginx and git runs
SPAWN_COST = 5          # a spawn's own: the log pipe, Popen's error pipe, the pidfd


def kept(live: int) -> int:
    """Descriptors a spawn needs free with ``live`` processes running (the router leaves
    them too, besides its own reserve)."""
    return SPAWN_COST + live + RESERVE


def check_headroom(live: int) -> None:
    """Raise OSError(EMFILE) when a spawn would leave fewer than ``live`` + RESERVE free."""
    soft = open_files_limit()
    free = soft - open_descriptors()
    if free < kept(live):
        raise OSError(errno.EMFILE, f"{os.strerror(errno.EMFILE)}: {free} of {soft} "
                      f"descriptors are free, and pikud keeps {live + RESERVE} to stop the "
                      f"{live} processes it runs and to stay reachable")
