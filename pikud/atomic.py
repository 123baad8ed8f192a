"""Atomic file writes: temp file in the same folder, fsync, rename (stdlib only).

A reader (or a daemon killed at any instant) sees the old file or the new
one, never a torn mix.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def write_atomic(path: Path, data: str, mode: int = 0o644,
                 owner: tuple[int, int] | None = None) -> None:
    """Write ``path`` with ``mode`` (and ``owner``'s (uid, gid), given before it is in
    place); a missing folder is made 0700 for a private file."""
    path.parent.mkdir(mode=0o777 if mode & 0o077 else 0o700, parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
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


def _create_beside(path: Path) -> tuple[int, str]:
    """A new, private (0600) file beside ``path``, as tempfile.mkstemp makes one: a random
    name, created exclusively, no link followed. tempfile itself would bring shutil and
    random into the daemon (about 700 KiB of RSS)."""
    for _ in range(10):
        tmp = os.path.join(path.parent, f".{path.name}.{os.urandom(6).hex()}.tmp")
        try:
            return os.open(tmp, NEW_FILE, 0o600), tmp
        except FileExistsError:     # 48 random bits: only ever a planted name
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


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
