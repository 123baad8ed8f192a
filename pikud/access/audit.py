"""The audit log: ``$PIKU_ROOT/audit.log``, one JSON object per line, 0600.

Every command that changes something and every refusal is one line: time,
key name and fingerprint (null for the console), pid, command, app, outcome
("ok", or the error's code) and the message of a refusal. It rotates by size
like the app logs (procman/logs.py: ``.1`` ... ``.N``) and ``piku audit``
reads it back through ``GET /audit``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from pikud.procman.logs import APPENDING, open_log, rotate, tail

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.path, self.max_bytes, self.backups = path, max_bytes, backups

    def write(self, entry: dict[str, Any]) -> None:
        """Append one line; a failing disk is logged, never raised (the request goes on)."""
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **entry},
                          separators=(",", ":")).encode() + b"\n"
        try:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(line) > self.max_bytes:
                rotate(self.path, self.backups)
            fd = open_log(self.path, APPENDING, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("audit line lost: cannot write %s: %s: %s", self.path, exc,
                      line.decode().rstrip())

    def last(self, lines: int, app: str | None = None) -> list[dict[str, Any]]:
        """The last ``lines`` entries (of ``app``), oldest first; lines that are not JSON
        objects (a hand edit) are skipped."""
        want = lines
        while lines:
            raw = tail(self.path, want)
            entries = [e for e in map(_entry, raw) if e is not None
                       and (app is None or e.get("app") == app)]
            if len(entries) >= lines or len(raw) < want:
                return entries[-lines:]
            want *= 4           # another app's lines were among them: reach further back
        return []


def _entry(line: str) -> dict[str, Any] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None
