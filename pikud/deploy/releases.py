"""Numbered releases of an app: their directories and their records.

A release is one checked-out, built revision in ``releases/APP/N``. The
records (revision, time, pusher, runtime environment, the config it ran
with) live in ``pikud/releases/APP.json``, written atomically, 0600. ``apps/APP``
is a symlink to the current release, so piku's layout still holds.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pikud.atomic import write_atomic
from pikud.errors import DeployError
from pikud.paths import Paths


@dataclass(frozen=True)
class Release:
    number: int
    revision: str
    ref: str = ""
    time: float = 0.0
    pusher: str = ""
    fingerprint: str = ""
    runtime: str = ""
    env_path: str | None = None
    env_vars: dict[str, str] = field(default_factory=dict)
    path_prefix: tuple[str, ...] = ()
    config: dict[str, str] = field(default_factory=dict)     # the ENV overrides it ran with

    def summary(self, current: int | None) -> dict[str, Any]:
        data = asdict(self)
        data["current"] = self.number == current
        return data


class ReleaseStore:
    """The releases of one app: allocate, record, switch ``apps/APP``, prune."""

    def __init__(self, paths: Paths, app: str) -> None:
        self.paths, self.app = paths, app
        self.root = paths.root / "releases" / app
        self.file = paths.state_dir / "releases" / f"{app}.json"
        self.releases: list[Release] = []
        self.current: int | None = None
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        self.current = data.get("current")
        self.releases = [Release(**dict(r, path_prefix=tuple(r.get("path_prefix", ()))))
                         for r in data.get("releases", [])]

    def _save(self) -> None:
        data = {"current": self.current, "releases": [asdict(r) for r in self.releases]}
        write_atomic(self.file, json.dumps(data, indent=2) + "\n", 0o600)    # holds config

    def directory(self, number: int) -> Path:
        return self.root / str(number)

    def next_number(self) -> int:
        taken = [r.number for r in self.releases]
        if self.root.is_dir():
            taken += [int(p.name) for p in self.root.iterdir() if p.name.isdigit()]
        return max(taken, default=0) + 1

    def get(self, number: int | None = None) -> Release:
        """Release ``number``, or the current one."""
        wanted = self.current if number is None else number
        for release in self.releases:
            if release.number == wanted:
                return release
        raise DeployError(f"{self.app} has no release {wanted}" if wanted is not None
                          else f"{self.app} has no release yet")

    def previous(self) -> Release:
        older = [r for r in self.releases if self.current is None or r.number < self.current]
        if not older:
            raise DeployError(f"{self.app} has no release before the current one")
        return older[-1]

    def activate(self, release: Release) -> None:
        """Record ``release`` (if new) as current and point apps/APP at its directory."""
        if all(r.number != release.number for r in self.releases):
            self.releases.append(release)
            self.releases.sort(key=lambda r: r.number)
        self.current = release.number
        link = self.paths.app(self.app)
        if link.exists() and not link.is_symlink():
            # Code placed in apps/APP by hand (or by piku) is kept, out of apps/.
            self.root.mkdir(parents=True, exist_ok=True)
            link.rename(self.root / f"pre-pikud-{int(time.time())}")
        tmp = link.with_name(f".{self.app}.link")
        if tmp.is_symlink():
            tmp.unlink()
        os.symlink(os.path.relpath(self.directory(release.number), link.parent), tmp)
        os.replace(tmp, link)
        self._save()

    def prune(self, keep: int) -> list[int]:
        """Forget all but the newest ``keep`` releases (never the current one).

        Returns their numbers; the caller removes their directories.
        """
        removed = [r.number for r in (self.releases[:-keep] if keep > 0 else [])
                   if r.number != self.current]
        self.releases = [r for r in self.releases if r.number not in removed]
        self._save()
        return removed

    def env_paths_in_use(self) -> set[str]:
        return {r.env_path for r in self.releases if r.env_path}
