"""The daemon's descriptors: its open-files limit, raised at start, how many are open, and
how to duplicate a listening socket that other processes share.

systemd starts a service with a soft RLIMIT_NOFILE of 1024 (FACTS.md), far
below its hard limit; every connection, pipe and pidfd of the daemon counts
against the soft one, so the daemon raises it to the hard one before it opens
anything, and logs both figures.
"""

from __future__ import annotations

import logging
import os
import resource
import socket

log = logging.getLogger("pikud")


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        log.info("open files: limit %d (soft = hard)", soft)
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("open files: soft limit kept at %d, could not raise it to %d: %s",
                    soft, hard, exc)
        return soft
    log.info("open files: soft limit raised from %d to %d", soft, hard)
    return hard


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE (a very large number when unlimited)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 2**31 if soft == resource.RLIM_INFINITY else soft


def open_descriptors() -> int:
    """How many descriptors the daemon holds: /proc/self/fd's size (Linux 6.2 and later,
    a few microseconds, and no descriptor needed), else a listing of it (about 1 ms per
    1,000 descriptors)."""
    return os.stat("/proc/self/fd").st_size or len(os.listdir("/proc/self/fd")) - 1


def duplicate(sock: socket.socket) -> socket.socket:
    """A second socket object on ``sock``'s open file, whose flags it leaves alone.

    ``socket.dup()`` gives the copy ``sock``'s timeout, and a socket object made
    from a descriptor (one inherited, or carried across a re-exec) has none: so
    it clears O_NONBLOCK on the open file, which every process holding it shares.
    The re-exec bridge accepts on the router's listener while the new image
    starts its router on a duplicate; an accept of the bridge's in that instant
    blocked until the next connection came, with the connection it had just
    accepted unanswered (a client waited 20 s).
    """
    return socket.socket(fileno=os.dup(sock.fileno()))
