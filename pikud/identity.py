"""Who runs what: the deploy user, and each app's own system user when pikud runs as root.

As root, with a deploy user that is not root (pikud.toml's ``deploy_user``,
default: the owner of PIKU_ROOT), app users are on: every process that runs
an app's code (its slots, cron runs, preflight and release steps, and its
build: uv/pip, npm, bundle, go, cargo, with their caches under
``cache/APP/build``) runs as the app's user ``piku-APP`` (appusers.py makes
it); git (the app's repository, the checkout) and acme.sh run as the deploy
user; nothing an app or a push brings runs as root. Otherwise (pikud runs as
the piku user; or as root on a root-owned PIKU_ROOT, as the quick start and
the test suite do) everything runs as the daemon's uid, as it always did.

User names: at most 32 characters, and Ubuntu 22.04's useradd takes only
``[a-z0-9_-]``. An app name of lowercase letters, digits, ``_`` and ``-`` of
at most 27 characters gives ``piku-APP``; any other (capitals, dots, longer)
gives ``piku-`` + its first 18 characters lowercased (other characters as
``_``) + ``-`` + the first 8 hex digits of the SHA-256 of the name: the same
for one app every time, distinct for names that differ only in case.

A user is the app's only if its GECOS field is ``pikud app APP``: a user of
that name made by hand or for another app (two names can meet after the
truncation) is refused, never adopted or removed.

Stdlib only: appspec.py asks it for the HOME and USER of an app's processes.
"""

# Design notes: the switch is an exec wrapper in front of the command,
# ``setpriv --reuid --regid --clear-groups --``, like prlimit in procman/enforce.py,
# because Popen's user=/group= take a spawn off the vfork path: 100 spawns of
# /bin/true from a 300 MB parent took 1,418 ms with user= and 178 ms through
# setpriv (73 ms with no switch). setpriv execs, so the pid stays spawn()'s. It
# goes inside the limits' wrappers: the cgroup is joined and the rlimits set as
# root, then the uid changes (RLIMIT_NPROC then counts the app's user alone).

from __future__ import annotations

import logging
import os
import pwd
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pikud.digest import sha256
from pikud.errors import AppUserError, SpecError
from pikud.paths import LAYOUT, Paths
from pikud.programs import which

log = logging.getLogger(__name__)

LOADER_VARS = frozenset({
    "GCONV_PATH", "GETCONF_DIR", "GLIBC_TUNABLES", "HOSTALIASES", "LOCALDOMAIN", "LOCPATH",
    "MALLOC_TRACE", "NIS_PATH", "NLSPATH", "RESOLV_HOST_CONF", "RES_OPTIONS", "TMPDIR", "TZDIR",
})
"""With every ``LD_*``: glibc's unsecure variables (those it ignores in a set-user-ID
program), which make a program load code or files they name (``past_root``)."""
PREFIX = "piku-"
PLAIN = re.compile(r"[a-z0-9_-]{1,27}")
STEM = 18
MARKER = "pikud app "
NGINX_CACHE = ".nginx"      # cache/.nginx/APP: no app name starts with a dot


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: str

    @classmethod
    def of(cls, entry: pwd.struct_passwd) -> Account:
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir)


def user_name(app: str) -> str:
    """The system user of ``app`` (see the module's docstring): at most 32 characters."""
    if PLAIN.fullmatch(app):
        return PREFIX + app
    stem = re.sub(r"[^a-z0-9_-]", "_", app.lower())[:STEM]
    return f"{PREFIX}{stem}-{sha256(app.encode()).hex()[:8]}"


def marker(app: str) -> str:
    """The GECOS field of the users pikud makes: what tells them from anyone else's."""
    return MARKER + app


def lookup(app: str) -> Account | None:
    """``app``'s user, or None when there is none yet; AppUserError when its name is taken
    by a user pikud did not make for this app."""
    name = user_name(app)
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    if entry.pw_gecos != marker(app):
        raise AppUserError(
            f"user {name} exists but pikud did not make it for {app} (its GECOS field is "
            f"{entry.pw_gecos!r}, not {marker(app)!r}): {app} will not run as a user it "
            "does not own; remove or rename that user")
    return Account.of(entry)


@dataclass(frozen=True)
class Identity:
    """The deploy user, when app users are on (None: one uid for everything)."""

    deploy: Account | None = None
    setpriv: str = "setpriv"
    env_program: str = "/usr/bin/env"

    @property
    def separate(self) -> bool:
        return self.deploy is not None

    def app_account(self, app: str) -> Account:
        """``app``'s user, which must exist (appusers.ensure makes it before a start)."""
        account = lookup(app)
        if account is None:
            raise AppUserError(f"{app} has no user {user_name(app)} yet: start or deploy it")
        return account

    def _as(self, account: Account, argv: Sequence[str]) -> list[str]:
        return [self.setpriv, f"--reuid={account.uid}", f"--regid={account.gid}",
                "--clear-groups", "--", *argv]

    def past_root(self, argv: Sequence[str], env: Mapping[str, str],
                  ) -> tuple[list[str], dict[str, str]]:
        """``argv`` and ``env`` to spawn, with the LOADER_VARS of ``env`` kept from what runs
        as root (the limits' wrappers, setpriv) and set again by env(1) once the uid has
        changed: an app's ENV (``LD_PRELOAD=./x.so``) must not load code into root."""
        argv, env = list(argv), dict(env)
        switch = next((i + 5 for i, word in enumerate(argv) if word == self.setpriv
                       and argv[i + 4:i + 5] == ["--"]), None)
        if not self.separate or switch is None:
            return argv, env
        moved = [f"{key}={env.pop(key)}" for key in sorted(env)
                 if key.startswith("LD_") or key in LOADER_VARS]
        if moved:
            argv[switch:switch] = [self.env_program, *moved]
        return argv, env

    def as_app(self, app: str, argv: Sequence[str]) -> list[str]:
        """``argv`` run as ``app``'s user when app users are on, else as it is."""
        return self._as(self.app_account(app), argv) if self.separate else list(argv)

    def as_deploy(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as the deploy user when app users are on (git, acme.sh), else as
        it is."""
        return self._as(self.deploy, argv) if self.deploy is not None else list(argv)

    def account_env(self, app: str, paths: Paths) -> dict[str, str]:
        """HOME, USER and LOGNAME of ``app``'s processes: its user, its data folder."""
        if not self.separate:
            return {}
        name = user_name(app)
        return {"HOME": str(paths.data(app)), "USER": name, "LOGNAME": name}

    def build_env(self, app: str, paths: Paths) -> dict[str, str]:
        """HOME, USER and LOGNAME of ``app``'s build: its user, HOME ``cache/APP/build``,
        where uv, pip, npm, go and cargo keep their caches: the app's alone, since a
        cache another app could write would let it poison this app's next build."""
        if not self.separate:
            return {}
        name = user_name(app)
        return {"HOME": str(paths.build_home(app)), "USER": name, "LOGNAME": name}

    def app_owner(self, app: str) -> tuple[int, int] | None:
        """(uid, gid) of ``app``'s user, to give it what its build writes (the release, its
        environments); None when nothing changes hands."""
        if not self.separate:
            return None
        account = self.app_account(app)
        return account.uid, account.gid

    def home(self) -> Path:
        """The deploy user's home (acme.sh's ~/.acme.sh), else the daemon's."""
        return Path(self.deploy.home) if self.deploy is not None else Path.home()

    def nginx_cache(self, paths: Paths, app: str) -> Path:
        """Where nginx keeps ``app``'s proxy cache (NGINX_CACHE_*): ``cache/APP`` as ever,
        or with app users ``cache/.nginx/APP``, out of the app's reach (proxy/nginx.py)."""
        return paths.root / "cache" / NGINX_CACHE / app if self.separate else paths.cache(app)

    def socket_folder(self, paths: Paths, app: str) -> Path:
        """Where ``app``'s unix sockets are: ``nginx/sockets`` as ever, or with app users
        ``nginx/sockets/piku-APP``, the app user's (granian binds there as it; appusers.py)."""
        return paths.sockets / user_name(app) if self.separate else paths.sockets

    def deploy_env(self) -> dict[str, str]:
        """HOME, USER and LOGNAME of git and acme.sh: the deploy user's."""
        if self.deploy is None:
            return {}
        name = self.deploy.name
        return {"HOME": self.deploy.home, "USER": name, "LOGNAME": name}

    def deploy_owner(self) -> tuple[int, int] | None:
        """(uid, gid) to give the files pikud writes for the deploy user (ENV, LIVE_ENV,
        SCALING, the control socket); None when nothing changes hands."""
        return (self.deploy.uid, self.deploy.gid) if self.deploy is not None else None

    def give(self, path: Path, owner: tuple[int, int] | None, mode: int) -> None:
        """Make ``path`` (a folder, made if missing) ``owner``'s with ``mode``. Changed through
        a descriptor of the folder itself: a link there (an app can put one in its own
        cache/APP) is refused, never followed to a folder root would hand over."""
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        fd = open_folder(path)
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)

    def own_layout(self, paths: Paths) -> list[Path]:
        """Give the deploy user the layout's folders root made (pikud started as root on a
        new PIKU_ROOT), but nginx/, which stays root's (sealing.py); returns what changed
        hands. A link there is left (the deploy user can put PIKU_ROOT/logs -> /etc)."""
        owner = self.deploy_owner()
        changed = []
        for path in [paths.root, *(paths.root / name for name in LAYOUT if name != "nginx")]:
            if owner is None:
                break
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):      # the deploy user's link to /etc, say
                log.warning("app users: not given to the deploy user, a link: %s", path)
            elif info.st_uid == 0:
                os.chown(path, *owner, follow_symlinks=False)
                changed.append(path)
        return changed


def open_folder(path: Path) -> int:
    """A descriptor of the folder ``path`` itself; AppUserError when it is a link (or not a
    folder), which root must never follow to hand over what it points to."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise AppUserError(f"{path} is not a folder ({exc.strerror}): pikud changes the "
                           "owner of folders, never of what a link points to; remove it"
                           ) from None


def resolve(deploy_user: str | None, root: Path, settings_file: str) -> Identity:
    """The identity of a daemon with euid ``os.geteuid()``: app users when it is root and
    the deploy user is not; SpecError (naming deploy_user) when that user does not exist."""
    if os.geteuid() != 0:
        return Identity()
    name = deploy_user
    if name is None:
        owned = root if root.exists() else root.parent
        name = pwd.getpwuid(owned.stat().st_uid).pw_name
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SpecError(f"deploy_user {name!r} is not a user here: pikud runs as root and runs "
                        "builds and the control socket as that user", file=settings_file,
                        key="deploy_user") from None
    if entry.pw_uid == 0:
        return Identity()
    setpriv = which("setpriv")
    if setpriv is None:
        raise SpecError("setpriv (util-linux) is not on PATH: pikud runs as root and needs it "
                        "to run apps as their own users", file=settings_file, key="deploy_user")
    return Identity(Account.of(entry), setpriv, which("env") or "/usr/bin/env")


_current: list[Identity] = []


def use(identity: Identity) -> None:
    """Make ``identity`` the daemon's (at start)."""
    _current[:] = [identity]


def current() -> Identity:
    """The identity set by ``use``; one uid for everything where no daemon set one."""
    return _current[0] if _current else Identity()
