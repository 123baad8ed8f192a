"""Making, equipping and removing an app's system user (identity.py says when and who).

``provision`` runs before an app's processes start (start, deploy, any
change): it makes ``piku-APP`` if missing (useradd: a system user and its own
group, no home made, no login shell, GECOS ``pikud app APP``), refuses it
cron and at (crondeny.py) and sets the app's folders:

- ``data/APP``, ``cache/APP`` and ``cache/APP/build`` (its builds' HOME):
  the app user's, 0700 (no other app enters);
- ``logs/APP``: the deploy user's, 0750 (pikud writes the logs through pipes;
  the app user needs no access);
- ``envs/APP``: the deploy user's, 0711 (its runtime environments are reached, ENV and
  LIVE_ENV in it are 0600 and the folder cannot be listed: the
  app gets its environment from pikud, not from the file);
- ``nginx/sockets/piku-APP``: its unix sockets, the app user's with the group of
  ``nginx/sockets`` (nginx's workers', ``piku setup --fix``), 2750 with setgid: granian
  binds there as the app's user, nginx's workers connect, other apps cannot enter.
  ``nginx/sockets`` gets o+x so the app's user can pass it (it still cannot list it).

``retire`` (destroy) gives the kept ``data/APP`` and ``cache/APP`` to the
deploy user, so a later user that gets the same uid owns nothing of them,
then removes its crontab, the user and its group, and its lines in the deny files.
"""

from __future__ import annotations

import asyncio
import grp
import logging
import os
import shlex
import stat
from collections.abc import Sequence
from pathlib import Path

from pikud import crondeny
from pikud.errors import AppUserError
from pikud.identity import Account, Identity, lookup, marker, open_folder, user_name
from pikud.nginxaccess import SOCKETS_MODE
from pikud.paths import Paths
from pikud.procman.oneshot import run_once
from pikud.programs import which

log = logging.getLogger(__name__)

NOLOGIN = "/usr/sbin/nologin"
TOOLS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_changing = asyncio.Lock()      # one useradd/userdel at a time: they lock /etc/passwd


async def _run(argv: Sequence[str]) -> None:
    lines: list[str] = []
    info = await run_once(argv, env={"PATH": TOOLS_PATH}, cwd=Path("/"),
                          on_line=lines.append, timeout=60)
    if info.code != 0:
        raise AppUserError(f"`{shlex.join(argv)}` failed ({info}): "
                           + " ".join(lines)[-300:])


async def ensure(app: str, home: Path) -> Account:
    """``app``'s user, made if missing and refused cron and at (crondeny.py); AppUserError
    for a user pikud did not make."""
    async with _changing:
        account = lookup(app)
        if account is None:
            name = user_name(app)
            await _run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", str(home), "--shell", NOLOGIN, "--comment", marker(app),
                        name])
            account = lookup(app)
            if account is None:
                raise AppUserError(f"useradd {name} succeeded but the user cannot be found")
            log.info("app user: made %s (uid %d) for %s", name, account.uid, app)
        try:
            changed = await asyncio.to_thread(crondeny.deny, account.name)
        except OSError as exc:
            raise AppUserError(f"cannot add {account.name} to {exc.filename} ({exc.strerror}):"
                               " app users may not schedule code outside pikud") from None
        for path in changed:
            log.info("app user: %s refused in %s", account.name, path)
        return account


async def remove(app: str) -> bool:
    """Remove ``app``'s user and its group; False when it had none."""
    async with _changing:
        account = lookup(app)
        if account is None:
            return False
        # crontab refuses a user in cron.deny, even for root: let it out for the removal,
        # and back in if the user stays (userdel refuses while a process runs as it)
        await _allow_cron(account.name, True)
        try:
            await _forget_crontab(account.name)
            await _run(["userdel", account.name])
        except BaseException:
            await _allow_cron(account.name, False)
            raise
        try:
            group = grp.getgrnam(account.name)
        except KeyError:
            group = None        # userdel removed it (USERGROUPS_ENAB)
        if group is not None and group.gr_gid == account.gid:
            await _run(["groupdel", account.name])
        log.info("app user: removed %s (uid %d) of %s", account.name, account.uid, app)
        return True


async def _allow_cron(name: str, allowed: bool) -> None:
    """Take ``name`` out of the deny files, or put it back; a failure is logged."""
    try:
        await asyncio.to_thread(crondeny.undeny if allowed else crondeny.deny, name)
    except OSError as exc:
        log.warning("app user: %s not %s %s (%s)", name, "taken out of" if allowed else
                    "put back in", exc.filename, exc.strerror)


async def _forget_crontab(name: str) -> None:
    """Remove the crontab ``name`` may have made before it was denied; none is no error."""
    crontab = which("crontab", path=TOOLS_PATH)
    if crontab is None:
        return
    lines: list[str] = []
    info = await run_once([crontab, "-r", "-u", name], env={"PATH": TOOLS_PATH},
                          cwd=Path("/"), on_line=lines.append, timeout=60)
    if info.code != 0 and not any("no crontab" in line for line in lines):
        log.warning("app user: crontab -r -u %s failed (%s): %s", name, info,
                    " ".join(lines)[-300:])


async def provision(identity: Identity, paths: Paths, app: str) -> Account | None:
    """Make ``app``'s user if app users are on and set its folders (the module's docstring)."""
    if not identity.separate:
        return None
    account = await ensure(app, paths.data(app))
    for folder in (paths.data(app), paths.cache(app), paths.build_home(app)):
        identity.give(folder, (account.uid, account.gid), 0o700)
    identity.give(paths.log_dir(app), identity.deploy_owner(), 0o750)
    identity.give(paths.env_dir(app), identity.deploy_owner(), 0o711)
    parent = paths.sockets
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    parent.chmod(stat.S_IMODE(parent.stat().st_mode) | 0o001)
    identity.give(identity.socket_folder(paths, app), (account.uid, parent.stat().st_gid),
                  SOCKETS_MODE)
    return account


async def retire(identity: Identity, paths: Paths, app: str) -> bool:
    """After ``app`` was destroyed: its kept folders to the deploy user, its user removed."""
    if not identity.separate or lookup(app) is None:
        return False
    owner = identity.deploy_owner()
    assert owner is not None
    for folder in (paths.data(app), paths.cache(app)):
        if folder.is_dir() and not folder.is_symlink():
            await give_tree(folder, owner)
    return await remove(app)


async def give_tree(folder: Path, owner: tuple[int, int] | None, seal: bool = False) -> None:
    """``folder`` and everything in it to ``owner``; nothing when ``owner`` is None. With
    ``seal``, group/other write and setuid/setgid go too (a release given back to the deploy
    user: a step's ``chmod -R a+w`` must not let the app's code rewrite ENV or
    NGINX_INCLUDE_FILE). AppUserError when ``folder`` is not a folder (a link)."""
    if owner is not None:
        await asyncio.to_thread(_give_tree, folder, owner, seal)


_SEALED = ~(stat.S_ISUID | stat.S_ISGID | stat.S_IWGRP | stat.S_IWOTH)


def _give_tree(folder: Path, owner: tuple[int, int], seal: bool) -> None:
    """Walk by descriptors (fwalk, names relative to their folder's descriptor, no link
    followed): the app's user may still run and swap a folder for a link mid-walk, and a
    path re-resolved from the top would let it make root give away what the link names."""
    top = open_folder(folder)
    try:
        _give(top, owner, seal)
        for _, dirs, files, dir_fd in os.fwalk(dir_fd=top, follow_symlinks=False):
            for name in (*dirs, *files):
                os.chown(name, *owner, dir_fd=dir_fd, follow_symlinks=False)
                if seal:
                    _seal_entry(name, dir_fd)
    finally:
        os.close(top)


def _give(fd: int, owner: tuple[int, int], seal: bool) -> None:
    os.fchown(fd, *owner)
    if seal:
        _seal(fd, os.fstat(fd).st_mode)


def _seal(fd: int, mode: int) -> None:
    if stat.S_IMODE(mode) & ~_SEALED:
        os.fchmod(fd, stat.S_IMODE(mode) & _SEALED)


def _seal_entry(name: str, dir_fd: int) -> None:
    """Clear the bits of a file or folder; links, sockets and fifos are left (O_NONBLOCK:
    a fifo swapped in does not block the open)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=dir_fd)
    except OSError:
        return          # a link (ELOOP), or gone since the walk listed it
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
            _seal(fd, mode)
    finally:
        os.close(fd)
