"""Checking a pushed revision out into a new release directory (daemon side).

The release is a git work tree of its own whose objects come from the app's
bare repo through ``objects/info/alternates``. During a push the new objects
are still in git's quarantine, which the hook passes along; it is used as an
extra alternate for this checkout only. Submodules are fetched too.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pikud import identity
from pikud.errors import BadRequest
from pikud.procman.oneshot import run_once

if TYPE_CHECKING:    # not the runtimes themselves: handlers validate refs at rest
    from pikud.deploy.runtimes.base import Runner

REVISION = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
# Besides control characters and ".." (git-check-ref-format).
REF_FORBIDDEN = frozenset(" ~^:?*[\\")
QUARANTINE_KEYS = ("GIT_QUARANTINE_PATH", "GIT_OBJECT_DIRECTORY",
                   "GIT_ALTERNATE_OBJECT_DIRECTORIES")


def validate_revision(revision: str) -> str:
    if not REVISION.fullmatch(revision):
        raise BadRequest(f"revision must be a full hex object name, got {revision!r}")
    return revision


def validate_ref(ref: str) -> str:
    """A ref as the hook passes it (refs/heads/main), or "" for none; it reaches git's argv."""
    if ref and not (ref.startswith("refs/") and ref.isprintable() and ".." not in ref
                    and REF_FORBIDDEN.isdisjoint(ref)):
        raise BadRequest(f"ref must be a git ref name such as refs/heads/main, got {ref!r}")
    return ref


def quarantine_dirs(repo: Path, git_env: Mapping[str, str]) -> list[str]:
    """Object folders from the hook's environment, each inside ``repo`` (else refused)."""
    unknown = set(git_env) - set(QUARANTINE_KEYS)
    if unknown:
        raise BadRequest(f"git_env may only hold {', '.join(QUARANTINE_KEYS)}; "
                         f"got {', '.join(sorted(unknown))}")
    found = []
    for key in ("GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES"):
        for item in git_env.get(key, "").split(":"):
            if not item:
                continue
            path = (repo / item).resolve()     # relative to the repo, as git has them
            if not path.is_relative_to(repo.resolve()):
                raise BadRequest(f"{key} points outside the app's repository: {item!r}")
            found.append(str(path))
    return found


async def checkout(repo: Path, revision: str, dest: Path, git_env: Mapping[str, str],
                   env: Mapping[str, str], run: Runner) -> None:
    """Make ``dest`` a work tree of ``revision`` (detached), submodules included."""
    validate_revision(revision)
    extra = quarantine_dirs(repo, git_env)
    dest.mkdir(parents=True, exist_ok=True)         # made by the deploy user's, as root
    git_env_for_checkout = {k: v for k, v in env.items() if not k.startswith("GIT_")}
    await run(["git", "init", "--quiet", str(dest)], cwd=dest, env=git_env_for_checkout)
    alternates = dest / ".git" / "objects" / "info" / "alternates"
    alternates.write_text(f"{(repo / 'objects').resolve()}\n")
    with_quarantine = dict(git_env_for_checkout)
    if extra:
        with_quarantine["GIT_ALTERNATE_OBJECT_DIRECTORIES"] = os.pathsep.join(extra)
    await run(["git", "config", "remote.origin.url", str(repo.resolve())], cwd=dest,
              env=git_env_for_checkout)
    await run(["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach",
               revision], cwd=dest, env=with_quarantine)
    if (dest / ".gitmodules").exists():
        await run(["git", "submodule", "update", "--init", "--recursive"], cwd=dest,
                  env=with_quarantine)


async def ref_value(repo: Path, ref: str) -> str:
    """The object name ``ref`` points at in ``repo``, or "" when it (or the repo) does not exist."""
    if not repo.is_dir():           # an app placed in apps/ by hand has no repo
        return ""
    found: list[str] = []
    argv = identity.current().as_deploy(["git", "--git-dir", str(repo), "rev-parse", "--verify",
                                         "--quiet", f"{ref}^{{commit}}"])  # git: its owner
    info = await run_once(argv, env={"PATH": os.defpath}, cwd=repo, on_line=found.append)
    return found[0].strip() if info.code == 0 and found else ""


async def wait_for_ref(repo: Path, ref: str, value: str, timeout: float) -> bool:
    """Wait (bounded) until git has moved ``ref`` to ``value`` after an accepted push."""
    deadline = asyncio.get_running_loop().time() + timeout
    while await ref_value(repo, ref) != value:
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
