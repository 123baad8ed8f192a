"""Keeping app users out of cron and at: pikud schedules an app's code, nothing else may.

An app's user has no login shell, but the app's own code could still call
crontab(1) or at(1), and its jobs would run outside pikud (no limits, no
logs, past a destroy). Both tools read an allow file and a deny file:

- ``cron.allow`` present: only the names in it; else ``cron.deny``'s names
  are refused; with neither, Debian's cron lets everyone in, so
  ``cron.deny`` is made (0644) when missing;
- ``at.allow`` likewise; with neither ``at.allow`` nor ``at.deny``, at lets
  only root in, and an ``at.deny`` made then would let everyone else in: it
  is left missing.

``deny`` adds a user to each deny file that decides (an allow file present
already refuses it); ``undeny`` takes it out when the user goes. Writes are
atomic and keep the file's owner and mode.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from pikud.atomic import write_atomic


@dataclass(frozen=True)
class DenyFile:
    deny: Path
    allow: Path
    made_if_missing: bool     # False: a missing deny file already refuses all but root


DENY_FILES = (DenyFile(Path("/etc/cron.deny"), Path("/etc/cron.allow"), True),
              DenyFile(Path("/etc/at.deny"), Path("/etc/at.allow"), False))


def with_name(text: str, name: str) -> str | None:
    """``text`` with ``name`` on a line of its own; None when it is there already."""
    if name in text.splitlines():
        return None
    return text + ("\n" if text and not text.endswith("\n") else "") + name + "\n"


def without_name(text: str, name: str) -> str | None:
    """``text`` without ``name``'s lines; None when it had none."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if line.rstrip("\r\n") != name]
    return None if len(kept) == len(lines) else "".join(kept)


def deny(name: str) -> list[Path]:
    """Refuse ``name`` cron and at (the module's docstring); the files changed."""
    changed = []
    for entry in DENY_FILES:
        if entry.allow.exists() or not (entry.made_if_missing or entry.deny.exists()):
            continue
        text = entry.deny.read_text(encoding="utf-8") if entry.deny.exists() else ""
        if _rewrite(entry.deny, with_name(text, name)):
            changed.append(entry.deny)
    return changed


def undeny(name: str) -> list[Path]:
    """Take ``name`` out of the deny files (its user is gone); the files changed."""
    changed = []
    for entry in DENY_FILES:
        if entry.deny.exists() and _rewrite(
                entry.deny, without_name(entry.deny.read_text(encoding="utf-8"), name)):
            changed.append(entry.deny)
    return changed


def _rewrite(path: Path, text: str | None) -> bool:
    if text is None:
        return False
    try:
        info = os.stat(path)
    except FileNotFoundError:
        write_atomic(path, text, 0o644)
    else:
        write_atomic(path, text, stat.S_IMODE(info.st_mode), (info.st_uid, info.st_gid))
    return True
