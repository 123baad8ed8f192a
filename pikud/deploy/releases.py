"""Numbered releases of an app: their directories and their records.

A release is one checked-out, built revision in ``releases/APP/N``. The
records (revision, time, pusher, runtime environment, the config it ran
with) live in ``pikud/releases/APP.json``, written atomically, 0600. ``apps/APP``
is a symlink to the current release, so piku's layout still holds.

Records lost (the file corrupt, or gone while ``apps/APP`` still points into
``releases/APP``) are rebuilt from the folders: each ``releases/APP/N``
becomes release N with the revision git reads from it and the folder's time,
and the current one is where ``apps/APP`` points. What only the build knew
(its environment, the config it ran with, who pushed) is not rebuilt; a
rebuild of the current release (``piku deploy APP``) records it again.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pikud.atomic import write_atomic
from pikud.errors import DeployError
from pikud.paths import Paths
from pikud.statefile import json_object, load_json

log = logging.getLogger(__name__)


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
        self.releases: list[Release] = []
        self.current: int | None = None
        self.problem: str | None = None         # the records were lost and rebuilt
        self._load()

    # Properties, not attributes: the daemon holds a store per app, and paths are its heaviest.
    @property
    def root(self) -> Path:
        return self.paths.root / "releases" / self.app

    @property
    def file(self) -> Path:
        return self.paths.state_dir / "releases" / f"{self.app}.json"

    def _load(self) -> None:
        loaded = load_json(self.file, parse_records, f"pikud/releases/{self.app}.json")
        if loaded.data is not None:
            self.current, self.releases = loaded.data
            return
        current = self._linked()
        if loaded.problem is None and current is None:
            return                  # no records, and apps/APP is not a release: none yet
        self.releases = [self._rebuilt(int(p.name)) for p in self._folders()]
        self.current = current
        self.problem = (f"{loaded.problem or f'pikud/releases/{self.app}.json was missing'}; "
                        f"{len(self.releases)} releases rebuilt from releases/{self.app}/ "
                        f"(current: {current}) without their build environments: "
                        f"`piku deploy {self.app}` rebuilds the current one")
        log.warning("%s: release records rebuilt: %s", self.app, self.problem)
        try:
            self._save()
        except OSError as exc:
            log.error("%s: rebuilt release records not saved: %s", self.app, exc)

    def _folders(self) -> list[Path]:
        """The numbered release folders, oldest first."""
        found = [p for p in self.root.iterdir() if p.name.isdigit() and p.is_dir()] \
            if self.root.is_dir() else []
        return sorted(found, key=lambda p: int(p.name))

    def _linked(self) -> int | None:
        """The release apps/APP points at, if it is a symlink to a release folder."""
        link = self.paths.app(self.app)
        if not link.is_symlink():
            return None
        target = link.resolve()
        return int(target.name) if target.parent == self.root.resolve() \
            and target.name.isdigit() and target.is_dir() else None

    def _rebuilt(self, number: int) -> Release:
        folder = self.directory(number)
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "--verify", "-q", "HEAD"],
                              capture_output=True, text=True, check=False)
        return Release(number=number, revision=head.stdout.strip(),
                       time=folder.stat().st_mtime)

    def unrecorded(self) -> list[Path]:
        """Numbered folders no record names: left by a push killed half-way.

        Never the folder apps/APP points at. Callers hold off any build of
        this app meanwhile (the app's lock, or boot before requests act).
        """
        named = {r.number for r in self.releases} | {self._linked()}
        return [p for p in self._folders() if int(p.name) not in named]

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
        """The environments a release uses: its env_path, and those under envs/APP a PATH
        entry of it lies in (a node installed by nodeenv, beside its node_modules)."""
        envs = self.paths.env_dir(self.app)
        used = {r.env_path for r in self.releases if r.env_path}
        for release in self.releases:
            for entry in map(Path, release.path_prefix):
                if entry.is_relative_to(envs) and entry != envs:
                    used.add(str(envs / entry.relative_to(envs).parts[0]))
        return used


def parse_records(data: object) -> tuple[int | None, list[Release]]:
    """(current, releases) from a records file; ValueError/TypeError on another shape."""
    records = json_object(data)
    current = records.get("current")
    if current is not None and not isinstance(current, int):
        raise ValueError(f"current must be a release number, got {current!r}")
    releases = [Release(**dict(json_object(r), path_prefix=tuple(r.get("path_prefix", ()))))
                for r in records.get("releases", [])]
    return current, sorted(releases, key=lambda r: r.number)
