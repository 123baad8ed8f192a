"""Atomic file writes: temp file in the same folder, fsync, rename (stdlib only).

A reader (or a daemon killed at any instant) sees the old file or the new
one, never a torn mix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, data: str, mode: int = 0o644,
                 owner: tuple[int, int] | None = None) -> None:
    """Write ``path`` with ``mode`` (and ``owner``'s (uid, gid), given before it is in
    place); a missing folder is made 0700 for a private file."""
    import tempfile  # imported on first use: the resting daemon stays light; see README
    path.parent.mkdir(mode=0o777 if mode & 0o077 else 0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if owner is not None:
                os.fchown(f.fileno(), *owner)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def written_unless_failed(path: Path, data: str, mode: int = 0o644,
                          owner: tuple[int, int] | None = None) -> Iterator[None]:
    """Write ``path`` now; put back what it held (or nothing) if the block raises.

    For a setting that goes live in the block: one that fails to apply is
    not left behind for the next start.
    """
    try:
        old: str | None = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        old = None
    write_atomic(path, data, mode, owner)
    try:
        yield
    except BaseException:
        if old is None:
            path.unlink(missing_ok=True)
        else:
            write_atomic(path, old, mode, owner)
        raise
