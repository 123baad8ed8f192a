"""Opening a file that someone else may have put in place of the one pikud expects.

Log folders are the deploy user's, and pikud may read and write them as root;
pikud.toml is read at start and at every SIGHUP. Both are opened here: never
blocking on a FIFO, never taking a controlling tty, not through a link at the
last part of the path (unless the caller follows links), and only as a regular
file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

SAFE = os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def open_regular(path: Path, flags: int, mode: int = 0o666, *,
                 follow: bool = False) -> tuple[int, os.stat_result]:
    """A descriptor on ``path`` opened with ``flags``, and its status. OSError, with
    nothing left open, when it is a link at its last part (ELOOP, unless ``follow``),
    a folder (EISDIR) or anything else that is not a regular file (EINVAL, naming the
    mode)."""
    try:
        fd = os.open(path, flags | SAFE | (0 if follow else os.O_NOFOLLOW), mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and not follow:
            raise OSError(errno.ELOOP, "a symbolic link, which pikud does not follow") from None
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        if stat.S_ISDIR(info.st_mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        raise OSError(errno.EINVAL, f"not a regular file (mode {stat.filemode(info.st_mode)})")
    return fd, info
