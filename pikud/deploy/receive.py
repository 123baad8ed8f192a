"""The git side of a push, run by the CLI (stdlib only).

sshd runs ``piku git-receive-pack 'APP'``: the bare repo is created on the
first push with a pre-receive hook that calls ``piku git-hook APP``, then git
takes over. A pre-receive hook can refuse the push, so a failed deploy
rejects it (piku deploys from post-receive and accepts broken pushes).
"""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pikud.appspec import validate_app_name
from pikud.atomic import write_atomic
from pikud.errors import PikudError
from pikud.paths import Paths

# The variables git sets for a hook so that it can read objects still in quarantine.
QUARANTINE_VARS = ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY",
                   "GIT_ALTERNATE_OBJECT_DIRECTORIES")


def app_from_git_path(arg: str) -> str:
    """The app named by git's path argument: ``'myapp'``, ``/myapp.git``, ``myapp``."""
    name = arg.strip().strip("'\"").lstrip("/")
    if name.endswith(".git"):
        name = name[: -len(".git")]
    return validate_app_name(name)


def hook_script(piku: list[str], root: Path, app: str) -> str:
    return ("#!/bin/sh\n"
            "# Written by pikud: hands each push to the daemon, which can refuse it.\n"
            f"PIKU_ROOT={shlex.quote(str(root))} exec {shlex.join(piku)} "
            f"git-hook {shlex.quote(app)}\n")


def ensure_repo(paths: Paths, app: str, piku: list[str]) -> Path:
    """Create repos/APP (bare) on first push and (re)write its hook."""
    repo = paths.repo(app)
    if not (repo / "HEAD").exists():
        repo.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "--quiet", "--bare", str(repo)], check=True)
    write_atomic(repo / "hooks" / "pre-receive", hook_script(piku, paths.root, app), 0o755)
    return repo


@dataclass(frozen=True)
class Push:
    old: str
    new: str
    ref: str


def pushed_revision(stdin_text: str) -> Push | None:
    """The ref update to deploy: the last one that does not delete a ref."""
    chosen = None
    for line in stdin_text.splitlines():
        parts = line.split()
        if len(parts) != 3:
            raise PikudError(f"unexpected line from git on the hook's stdin: {line!r}")
        if parts[1].strip("0"):
            chosen = Push(*parts)
    return chosen


def quarantine_env() -> dict[str, str]:
    return {key: os.environ[key] for key in QUARANTINE_VARS if key in os.environ}


def point_head_at(ref: str) -> None:
    """Let clones check out the pushed branch when the repo's HEAD names none (first push).

    Run from the hook, whose working directory is the bare repo.
    """
    if not ref.startswith("refs/heads/"):
        return
    head = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"],
                          capture_output=True)
    if head.returncode != 0:
        subprocess.run(["git", "symbolic-ref", "HEAD", ref], check=True)
