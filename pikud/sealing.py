"""With app users, what nginx's master (root) reads from nginx/ is root's, not the deploy user's.

nginx's master includes ``nginx/*.conf`` as root, so whoever may write there
may run anything as root (``load_module``, ``access_log /etc/...``). With app
users the deploy user is not meant to be root: at each start pikud makes
``nginx/`` root's (0755), each site config and NGINX_INCLUDE_FILE copy in it
root's (0644), and ``nginx/sockets`` root's (its group and mode bits stay:
nginx's group, 2751). The certificate pairs stay the deploy user's: acme.sh
runs as that user and overwrites them in place (proxy/acme_sh.py), and nginx
only reads them as PEM. A link named like a site config is not pikud's (it
writes regular files) and is removed: nginx would include what it points to.

Stdlib only. Stat and change each file through one descriptor opened without
following a link, so a path swapped meanwhile is never what gets chowned.
"""

# Design notes: this closes nginx/ itself, not the folders above it. PIKU_ROOT
# and the home it sits in are the deploy user's, who can rename nginx/ (or
# the whole PIKU_ROOT) aside and put a folder of its own at the path nginx
# includes. ``open_above`` names such a folder, and the daemon says so at
# start; closing it needs those folders to be root's (the installer's job).

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from pikud.paths import Paths

log = logging.getLogger(__name__)

FOLDER_MODE, FILE_MODE = 0o755, 0o644
SITE_PATTERNS = ("*.conf", "*.include-*")      # what `include nginx/*.conf` reaches


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[int | None]:
    """A descriptor of ``path`` itself, not of what a link there points to; None when it is
    a link or gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        yield None
        return
    except OSError as exc:
        if exc.errno == errno.ELOOP:     # a symbolic link
            yield None
            return
        raise
    try:
        yield fd
    finally:
        os.close(fd)


def _to_root(path: Path, mode: int | None) -> bool:
    """Make ``path`` root's with ``mode`` (None: its group and mode stay, less g+w and o+w);
    True when anything changed."""
    with _opened(path) as fd:
        if fd is None:
            return False
        st = os.fstat(fd)
        current = stat.S_IMODE(st.st_mode)
        gid = 0 if mode is not None else st.st_gid
        wanted = mode if mode is not None else current & ~0o022
        if (st.st_uid, st.st_gid, current) == (0, gid, wanted):
            return False
        os.fchown(fd, 0, gid)
        os.fchmod(fd, wanted)
        return True


def seal_nginx(paths: Paths) -> list[Path]:
    """nginx/, its site configs and include copies root's, links among them removed; the
    sockets folder root's (the module's docstring). Returns what changed."""
    folder = paths.nginx()
    folder.mkdir(mode=FOLDER_MODE, parents=True, exist_ok=True)
    changed = [folder] if _to_root(folder, FOLDER_MODE) else []     # first: then it holds still
    if folder.is_symlink():
        log.error("app users: %s is a symbolic link: nginx's master (root) reads what it points "
                  "to; make it a folder", folder)
        return changed
    paths.sockets.mkdir(mode=0o700, exist_ok=True)
    if _to_root(paths.sockets, None):
        changed.append(paths.sockets)
    for pattern in SITE_PATTERNS:
        for path in sorted(folder.glob(pattern)):
            if path.is_symlink():
                path.unlink()
                log.warning("app users: removed %s, a link nginx's master would follow", path)
                changed.append(path)
            elif _to_root(path, FILE_MODE):
                changed.append(path)
    return changed


def open_above(path: Path) -> Path | None:
    """The first folder above ``path`` that someone other than root may change (owned by
    another user, or group- or other-writable without the sticky bit), or None."""
    for folder in reversed(path.parents):
        st = folder.stat()
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0 or (mode & 0o022 and not mode & stat.S_ISVTX):
            return folder
    return None
