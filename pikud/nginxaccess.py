"""Can nginx's workers reach what they serve? What stops them, and the chmod that fixes it.

nginx's workers run as the ``user`` of nginx's main config (www-data on
Debian). They must pass through every folder above what they serve (x),
list and read static folders (r+x) and write to unix sockets (w). Debian 12
makes home folders 0700, so a site nginx accepts still answers 403 or 502.
The apps' sockets (``nginx/sockets``) are for nginx alone: its workers get
in through the folder's group, never through "others" (``sockets_blocked``).

Stdlib only: the daemon checks each site it publishes (``proxy.nginx``), and
``piku setup`` checks the layout, without a daemon, as an installer calls it.
"""

# Design notes:
# - The worker user is read from nginx's main config file (the --conf-path of
#   `nginx -V`), not from `nginx -T`: as pikud's user, `nginx -T` fails before
#   its dump (it cannot bind ports below 1024, or open the error log).
# - Certificates are read by nginx's master, which runs as root: they need
#   not be readable by the workers, so they are not checked here.
# - The fix is the smallest mode bit: o+x on a folder on the way lets others
#   enter it without listing it. Giving the worker's group access works too,
#   and the advice says so, but only the chmod is applied (``Blocked.fix``).
# - The sockets folder is the exception: o+x there would let every local user
#   reach the apps past nginx's rules. It is made the worker's group's, 2750
#   with setgid, so every socket made in it (0660) is that group's too. pikud's
#   user cannot chgrp to a group it is not in: `piku setup --fix` as root does
#   (scripts/install), with the sockets already there. Under app users it
#   keeps o+x (2751: each app's user passes it to its own folder, which it
#   cannot list), so the chmod is symbolic: `u=rwx,g=rxs,o-rw` is right both ways.
# - Only folders decide, each app's alone: a socket is briefly 0755 between
#   granian's bind and its chmod, and an app user may chmod its own folder;
#   neither may move every other app's web processes to loopback ports.

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pikud.programs import which

DEFAULT_USER = "www-data"
DEFAULT_CONF = Path("/etc/nginx/nginx.conf")
TRAVERSE, WRITE, READ, LIST = 0o1, 0o2, 0o4, 0o5
_USER = re.compile(r"^\s*user\s+([^\s;]+)", re.MULTILINE)
_CONF_PATH = re.compile(r"--conf-path=(\S+)")
_NEED = {TRAVERSE: "o+x", WRITE: "o+w", READ: "o+r", LIST: "o+rx"}
SOCKETS_MODE = 0o2750           # the sockets folder: owner rwx, nginx's group r-x, setgid
SOCKETS_CHMOD = "u=rwx,g=rxs,o-rw"  # SOCKETS_MODE, keeping the o+x app users need


@dataclass(frozen=True)
class Target:
    """Something nginx's workers must reach: ``bits`` on it (r=4, w=2, x=1), x above it."""

    path: Path
    bits: int
    verb: str                   # "read", "connect to", ...: the advice says "cannot <verb>"


@dataclass(frozen=True)
class Blocked:
    """``path`` (``target`` itself or a folder above it) keeps ``user`` from ``target``."""

    user: str
    target: Target
    path: Path
    mode: int
    bits: int                   # what ``path`` lacks for others
    group: str | None = None    # the sockets folder: to be this group's (``sockets_blocked``)

    @property
    def command(self) -> str:
        if self.group is not None:
            return f"chgrp -R {self.group} {self.path} && chmod {SOCKETS_CHMOD} {self.path}"
        return f"chmod {_NEED[self.bits]} {self.path}"

    def advice(self) -> str:
        if self.group is not None:
            return (f"nginx (user {self.user}) cannot connect to the apps' sockets in "
                    f"{self.path}: it is mode {self.mode:04o}, group {_group_name(self.path)}; "
                    f"as root, fix with `{self.command}` (`piku setup --fix` does)")
        where = "it" if self.path == self.target.path else str(self.path)
        return (f"nginx (user {self.user}) cannot {self.target.verb} {self.target.path}: "
                f"{where} is mode {self.mode:04o}; fix with `{self.command}` "
                f"(or give group {self.user} access)")

    def fix(self) -> None:
        """Add the missing bits for others (or hand the sockets folder and the sockets in
        it to the group); OSError when pikud's user may not."""
        if self.group is None:
            os.chmod(self.path, stat.S_IMODE(self.path.stat().st_mode) | self.bits)
            return
        gid = grp.getgrnam(self.group).gr_gid
        for entry in (self.path, *self.path.iterdir()):
            os.chown(entry, -1, gid, follow_symlinks=False)
            if entry != self.path and entry.is_dir() and not entry.is_symlink():
                for inner in entry.iterdir():   # an app's own folder (app users): its sockets
                    if inner.is_socket():
                        os.chown(inner, -1, gid, follow_symlinks=False)
        # app users: o+x stays, for the apps' users to reach their own folders in it
        os.chmod(self.path, SOCKETS_MODE | stat.S_IMODE(self.path.stat().st_mode) & 0o001)


def user_from_conf(text: str) -> str | None:
    """The ``user`` directive of an nginx main config, without comments; None if absent."""
    match = _USER.search("\n".join(line.partition("#")[0] for line in text.splitlines()))
    return match.group(1) if match else None


def conf_path(version_output: str) -> Path:
    """nginx's main config file from `nginx -V`'s output, else Debian's."""
    match = _CONF_PATH.search(version_output)
    return Path(match.group(1)) if match else DEFAULT_CONF


def worker_user(conf: Path = DEFAULT_CONF) -> str:
    """The user nginx's workers run as, from its main config ``conf``; else www-data."""
    try:
        text = conf.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return DEFAULT_USER
    return user_from_conf(text) or DEFAULT_USER


def installed_worker_user(nginx: str = "nginx") -> str | None:
    """``worker_user`` of the nginx on PATH (or in /usr/sbin), for callers without a
    daemon; None when nginx is not installed."""
    program = which(nginx) or which(nginx, path="/usr/sbin")
    if program is None:
        return None
    try:
        done = subprocess.run([program, "-V"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return worker_user()
    return worker_user(conf_path(done.stdout + done.stderr))


def _can(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether ``uid`` (in ``gids``) has every permission in ``bits`` (as rwx 0-7)."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        mode = st.st_mode >> 6
    elif st.st_gid in gids:
        mode = st.st_mode >> 3
    else:
        mode = st.st_mode
    return mode & bits == bits


def _group_name(path: Path) -> str:
    gid = path.stat().st_gid
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _identity(user: str) -> tuple[int, set[int], int] | None:
    """``user``'s uid, groups and primary group; None when there is no such user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    gids = {entry.pw_gid} | {group.gr_gid for group in grp.getgrall() if user in group.gr_mem}
    return entry.pw_uid, gids, entry.pw_gid


def blocked(targets: Iterable[Target], user: str) -> list[Blocked]:
    """What keeps ``user`` from each target: the first folder on the way, or the target.

    Paths that do not exist yet are skipped; nothing is reported when ``user``
    does not exist. A folder shared by several targets is reported for each.
    """
    identity = _identity(user)
    if identity is None:
        return []
    uid, gids, _ = identity
    found: list[Blocked] = []
    for target in targets:
        for folder in (*reversed(target.path.parents), target.path):
            bits = target.bits if folder == target.path else TRAVERSE
            try:
                st = folder.stat()
            except OSError:
                break
            if not _can(st, uid, gids, bits):
                found.append(Blocked(user, target, folder, stat.S_IMODE(st.st_mode), bits))
                break
    return found


def sockets_blocked(folder: Path, user: str) -> list[Blocked]:
    """What keeps ``user`` from the unix sockets made (0660) in ``folder``: a folder on the
    way (o+x fixes it), or the folder itself, which must be a group's of ``user``'s, with
    g+x and setgid (each socket made in it then is that group's).

    About folders only: the sockets' own modes are pikud's and granian's (0660,
    set just after the bind), and an app user's folder inside ``folder`` is
    checked for that app alone (``Traffic.sockets_blocked``). Nothing when
    ``user`` runs as the folder's owner (or as root), or the folder does not
    exist yet.
    """
    target = Target(folder, TRAVERSE, "connect to the apps' sockets in")
    above = [item for item in blocked([target], user) if item.path != folder]
    identity = _identity(user)
    if above or identity is None:
        return above
    uid, gids, primary = identity
    try:
        st = folder.stat()
    except OSError:
        return []
    mode = stat.S_IMODE(st.st_mode)
    if uid in (0, st.st_uid) or st.st_gid in gids and mode & stat.S_ISGID and mode & 0o010:
        return []
    group = grp.getgrgid(primary).gr_name if st.st_gid not in gids else _group_name(folder)
    return [Blocked(user, target, folder, mode, TRAVERSE, group=group)]


def layout_targets(root: Path) -> list[Target]:
    """The folders of PIKU_ROOT that every site's files are under: ``releases/`` (static
    folders), ``acme/`` (ACME challenges) and ``cache/`` (nginx's cache)."""
    return [Target(root / name, TRAVERSE, f"serve {what} under")
            for name, what in (("releases", "static files"), ("acme", "ACME challenges"),
                               ("cache", "its cache"))]


def distinct(found: Iterable[Blocked]) -> list[Blocked]:
    """The first of each fix: several targets are often kept out by one folder."""
    first: dict[str, Blocked] = {}
    for item in found:
        first.setdefault(item.command, item)
    return list(first.values())


def fix_all(found: Iterable[Blocked]) -> list[str]:
    """Apply each distinct fix once; the commands applied, in order."""
    done = distinct(found)
    for item in done:
        item.fix()
    return [item.command for item in done]
