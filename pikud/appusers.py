"""Making, equipping and removing an app's system user (identity.py says when and who).

``provision`` runs before an app's processes start (start, deploy, any
change): it makes ``piku-APP`` if missing (useradd: a system user and its own
group, no home made, no login shell, GECOS ``pikud app APP``) and sets the
app's folders:

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
then removes the user and its group.
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

from pikud.errors import AppUserError
from pikud.identity import Account, Identity, lookup, marker, user_name
from pikud.nginxaccess import SOCKETS_MODE
from pikud.paths import Paths
from pikud.procman.oneshot import run_once

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
    """``app``'s user, made if missing; AppUserError for a user pikud did not make."""
    async with _changing:
        account = lookup(app)
        if account is not None:
            return account
        name = user_name(app)
        await _run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir",
                    str(home), "--shell", NOLOGIN, "--comment", marker(app), name])
        account = lookup(app)
        if account is None:
            raise AppUserError(f"useradd {name} succeeded but the user cannot be found")
        log.info("app user: made %s (uid %d) for %s", name, account.uid, app)
        return account


async def remove(app: str) -> bool:
    """Remove ``app``'s user and its group; False when it had none."""
    async with _changing:
        account = lookup(app)
        if account is None:
            return False
        await _run(["userdel", account.name])
        try:
            group = grp.getgrnam(account.name)
        except KeyError:
            group = None        # userdel removed it (USERGROUPS_ENAB)
        if group is not None and group.gr_gid == account.gid:
            await _run(["groupdel", account.name])
        log.info("app user: removed %s (uid %d) of %s", account.name, account.uid, app)
        return True


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
        if folder.is_dir():
            await give_tree(folder, owner)
    return await remove(app)


async def give_tree(folder: Path, owner: tuple[int, int] | None) -> None:
    """``folder`` and everything in it to ``owner`` (symlinks themselves, not their
    targets); nothing when ``owner`` is None."""
    if owner is not None:
        await asyncio.to_thread(_chown_tree, folder, owner)


def _chown_tree(folder: Path, owner: tuple[int, int]) -> None:
    os.chown(folder, *owner, follow_symlinks=False)
    for parent, dirs, files in os.walk(folder):
        for name in (*dirs, *files):
            os.chown(os.path.join(parent, name), *owner, follow_symlinks=False)
