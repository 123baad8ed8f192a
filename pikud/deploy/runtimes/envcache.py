"""Environments keyed by the content of the dependency files, built once and reused.

An environment lives in ``envs/APP/<runtime>-<key>``, where the key is a
sha256 of what decides its content: the dependency files (requirements.txt,
a lock file, ...), the tool and the interpreter version. A redeploy whose
dependency files are unchanged finds the directory complete and reuses it;
any change gives a new key, so a running release never sees its environment
change under it, and a rollback finds its own still in place.
"""

# Design notes:
# - Complete means "holds the marker file", which is written last. A directory
#   without it is the leftover of an interrupted build and is removed first.
# - The environment is built at its final path and removed if the build
#   fails, rather than built in a temporary directory and renamed: a Python
#   virtualenv is not relocatable (bin/activate, console-script shebangs and
#   pyvenv.cfg hold its absolute path), so a renamed venv would be broken.
#   Pushes to one app are serialized by the daemon, and environments are per
#   app, so nothing else writes the directory meanwhile; a release only ever
#   refers to a complete one.
# - The key covers file contents, not mtimes (piku compares mtimes, so a fresh
#   checkout always reinstalled and a touched file without change did too).

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from pikud.deploy.runtimes.base import BuildContext
from pikud.digest import sha256_hasher

MARKER = ".pikud-complete"
KEY_LENGTH = 12


def content_key(parts: Iterable[str], files: Iterable[Path]) -> str:
    """12 hex digits of sha256 over ``parts`` and each file's name and content.

    A file that does not exist counts as absent (distinct from empty). Every
    item is length-prefixed, so no two different inputs can run together.
    """
    digest = sha256_hasher()      # hashlib would set up OpenSSL's digests (digest.py)

    def feed(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)

    for part in parts:
        feed(part.encode())
    for path in files:
        feed(path.name.encode())
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            feed(b"absent")
        else:
            feed(b"present")
            feed(content)
    return digest.hexdigest()[:KEY_LENGTH]


def shown(ctx: BuildContext, path: Path) -> str:
    """How progress lines name an environment: ``envs/APP/python-3.11-1a2b3c4d5e6f``."""
    try:
        return path.relative_to(ctx.envs_dir.parent.parent).as_posix()
    except ValueError:
        return str(path)


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


async def remove(path: Path) -> None:
    """Remove a directory tree (or a stray link or file) without blocking the event loop."""
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    await asyncio.to_thread(shutil.rmtree, path, ignore_errors=True)


async def build_once(path: Path, fill: Callable[[Path], Awaitable[None]],
                     owner: tuple[int, int] | None = None) -> bool:
    """Reuse the complete environment at ``path`` (True), or build it with ``fill`` (False).

    ``fill`` receives ``path``, which does not exist yet; given ``owner`` (the
    build runs as the app's user, which may not write ``envs/APP``), an empty
    folder of that owner. On any failure or cancellation the directory is
    removed and the error propagates, so no half-built environment is ever
    left to be mistaken for a complete one.
    """
    if is_complete(path):
        return True
    await remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if owner is not None:
            path.mkdir(mode=0o755)
            os.chown(path, *owner, follow_symlinks=False)     # envs/APP is the deploy user's
        await fill(path)
        path.mkdir(exist_ok=True)
        (path / MARKER).write_text("complete\n")
    except BaseException:
        await remove(path)
        raise
    return False
