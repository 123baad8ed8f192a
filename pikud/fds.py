"""The daemon's descriptors: its open-files limit, raised at start, and how many are open.

systemd starts a service with a soft RLIMIT_NOFILE of 1024 (FACTS.md), far
below its hard limit; every connection, pipe and pidfd of the daemon counts
against the soft one, so the daemon raises it to the hard one before it opens
anything, and logs both figures.
"""

from __future__ import annotations

import logging
import os
import resource

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
