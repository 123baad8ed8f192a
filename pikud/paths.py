"""Every location under PIKU_ROOT, in one place.

The layout is piku's (apps, repos, envs, logs, data, cache, nginx, acme,
plugins) plus the daemon's own: ``pikud.sock`` (the control socket),
``pikud.toml`` (daemon settings) and ``pikud/`` (state written atomically).

What holds config, environment or app output is for pikud's user alone:
``envs/``, ``logs/`` and ``pikud/`` are 0700, and the files in them that
carry config are 0600. What nginx's workers read (``releases/``, ``acme/``,
``cache/``) and what its master reads (``nginx/``) lives elsewhere, so
opening the home folder to nginx (``chmod o+x``) opens none of it. The
apps' unix sockets (``nginx/sockets/``) are for nginx's group alone.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

LAYOUT = ("apps", "repos", "envs", "logs", "data", "cache", "nginx", "acme", "plugins", "pikud")
PRIVATE = ("envs", "logs", "pikud")
"""Folders of the layout only pikud's user may enter (0700)."""
ENV_FILES = ("ENV", "LIVE_ENV", "SCALING")
"""The files of ``envs/APP``, written 0600."""


def default_root() -> Path:
    """PIKU_ROOT from the environment, else ~/.piku as piku has it."""
    return Path(os.environ.get("PIKU_ROOT") or Path.home() / ".piku")


@dataclass(frozen=True)
class Paths:
    root: Path

    @classmethod
    def from_env(cls) -> Paths:
        return cls(default_root())

    @property
    def socket(self) -> Path:
        return self.root / "pikud.sock"

    @property
    def settings(self) -> Path:
        return self.root / "pikud.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "pikud"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def process_record(self) -> Path:
        """What runs, for the next pikud to adopt (procman/keeper.py); only under systemd."""
        return self.root / "run" / "processes.json"

    @property
    def access_rules(self) -> Path:
        """Which key may do what (access/rules.py); absent: every key is admin."""
        return self.state_dir / "access.json"

    @property
    def audit_log(self) -> Path:
        """Every change and every refusal, one JSON object per line (access/audit.py)."""
        return self.root / "audit.log"

    @property
    def cloudflare_ips(self) -> Path:
        """Cloudflare's ranges as last refreshed; the bundled list applies while it is absent."""
        return self.state_dir / "cloudflare_ips.txt"

    def app(self, app: str) -> Path:
        return self.root / "apps" / app

    def repo(self, app: str) -> Path:
        return self.root / "repos" / app

    def env_dir(self, app: str) -> Path:
        return self.root / "envs" / app

    def env_file(self, app: str) -> Path:
        return self.env_dir(app) / "ENV"

    def live_env_file(self, app: str) -> Path:
        return self.env_dir(app) / "LIVE_ENV"

    def scaling_file(self, app: str) -> Path:
        return self.env_dir(app) / "SCALING"

    def virtualenv(self, app: str) -> Path:
        return self.env_dir(app)

    def log_dir(self, app: str) -> Path:
        return self.root / "logs" / app

    def data(self, app: str) -> Path:
        return self.root / "data" / app

    def cache(self, app: str) -> Path:
        return self.root / "cache" / app

    def build_home(self, app: str) -> Path:
        """HOME of the app's builds when it has its own user (identity.py): its tools' caches."""
        return self.cache(app) / "build"

    def nginx(self) -> Path:
        return self.root / "nginx"

    @property
    def sockets(self) -> Path:
        """The unix sockets of wsgi/asgi slots (procman/sockets.py), for nginx's workers:
        0700 as the daemon makes it, 2750 with nginx's group after `piku setup --fix`."""
        return self.nginx() / "sockets"

    def create(self) -> None:
        """Make the layout (idempotent), like `piku setup`; PRIVATE folders 0700."""
        for name in LAYOUT:
            (self.root / name).mkdir(mode=0o700 if name in PRIVATE else 0o777, parents=True,
                                     exist_ok=True)
        self.sockets.mkdir(mode=0o700, exist_ok=True)

    def make_private(self, traverse: bool = False) -> list[Path]:
        """Take group and other access off what holds config (installs made before
        pikud wrote it 0600 in 0700 folders); returns what was changed.

        The PRIVATE folders, every file and folder under ``pikud/``, and each
        ``envs/APP`` with its ENV_FILES. Symlinks are left alone (chmod would
        change their target). ``traverse`` (app users: identity.py): ``envs/``
        and each ``envs/APP`` are 0711, so an app's user reaches its runtime
        environment in them, and lists nothing.
        """
        envs = self.root / "envs"
        passable = {envs, *(envs.iterdir() if traverse and envs.is_dir() else ())}
        targets = [self.root / name for name in PRIVATE]
        if self.state_dir.is_dir():
            targets += sorted(self.state_dir.rglob("*"))
        for folder in sorted(envs.iterdir()) if envs.is_dir() else ():
            targets += [folder, *(folder / name for name in ENV_FILES)]
        changed = []
        for path in targets:
            try:
                mode = path.lstat().st_mode
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(mode):
                continue
            wanted = stat.S_IMODE(mode) & 0o700
            if traverse and path in passable and stat.S_ISDIR(mode):
                wanted |= 0o011
            if wanted != stat.S_IMODE(mode) & 0o777:
                path.chmod(wanted)
                changed.append(path)
        return changed


def cli_argv() -> list[str]:
    """How to run this very `piku` again (from a git hook or sshd's forced command).

    The installed `piku` script when that is what runs, else this interpreter
    with ``-m pikud.cli``, which works wherever this code is running.
    """
    program = Path(sys.argv[0])
    if program.name == "piku" and os.access(program, os.X_OK):
        return [str(program.resolve())]
    return [sys.executable, "-m", "pikud.cli"]
