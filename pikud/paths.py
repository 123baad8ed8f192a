"""Every location under PIKU_ROOT, in one place.

The layout is piku's (apps, repos, envs, logs, data, cache, nginx, acme,
plugins) plus the daemon's own: ``pikud.sock`` (the control socket),
``pikud.toml`` (daemon settings) and ``pikud/`` (state written atomically).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

LAYOUT = ("apps", "repos", "envs", "logs", "data", "cache", "nginx", "acme", "plugins", "pikud")


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

    def nginx(self) -> Path:
        return self.root / "nginx"

    def create(self) -> None:
        """Make the layout (idempotent), like `piku setup`."""
        for name in LAYOUT:
            (self.root / name).mkdir(parents=True, exist_ok=True)


def cli_argv() -> list[str]:
    """How to run this very `piku` again (from a git hook or sshd's forced command).

    The installed `piku` script when that is what runs, else this interpreter
    with ``-m pikud.cli``, which works wherever this code is running.
    """
    program = Path(sys.argv[0])
    if program.name == "piku" and os.access(program, os.X_OK):
        return [str(program.resolve())]
    return [sys.executable, "-m", "pikud.cli"]
