"""What the scheduler remembers across daemon restarts, in one JSON file.

Per app and kind: the schedule and zone it was computed for, the last
scheduled time handled (so a restart neither repeats nor, within the
catch-up window, loses a time) and the last run. Writes are atomic and
coalesced over ``SAVE_DELAY`` seconds, so a minute in which 1,000 jobs fire
costs a few writes, not 2,000.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

from pikud.atomic import write_atomic
from pikud.statefile import json_object, load_json

log = logging.getLogger(__name__)

SAVE_DELAY = 1.0
Record = dict[str, Any]     # {"schedule", "tz", "handled" (ISO), "last_run": {...} | None}


class CronState:
    """The state file's content in memory: app -> kind -> record."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.problem: str | None = None         # the file was corrupt: history starts afresh
        self.apps = self._load()
        self._handle: asyncio.TimerHandle | None = None
        self.closed = False

    def get(self, app: str, kind: str) -> Record:
        return self.apps.get(app, {}).get(kind, {})

    def has(self, app: str, kind: str) -> bool:
        return kind in self.apps.get(app, {})

    def put(self, app: str, kind: str, record: Record) -> None:
        self.apps.setdefault(app, {})[kind] = record
        self.save_soon()

    def keep_only(self, app: str, kinds: set[str]) -> None:
        """Forget the app's kinds not in ``kinds`` (and the app when none is left)."""
        jobs = {kind: record for kind, record in self.apps.get(app, {}).items() if kind in kinds}
        if jobs:
            self.apps[app] = jobs
        else:
            self.apps.pop(app, None)
        self.save_soon()

    def save_soon(self) -> None:
        if self._handle is None and not self.closed:
            self._handle = asyncio.get_running_loop().call_later(SAVE_DELAY, self.save)

    def save(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        try:
            write_atomic(self.path, json.dumps({"version": 1, "apps": self.apps},
                                               indent=1, sort_keys=True) + "\n", 0o600)
        except OSError as exc:      # a full disk: kept in memory, saved with the next change
            log.error("cron: could not save %s: %s", self.path, exc)

    def close(self) -> None:
        self.save()
        self.closed = True

    def _load(self) -> dict[str, dict[str, Record]]:
        loaded = load_json(self.path, json_object, "pikud/cron.json")
        if loaded.problem is not None:
            self.problem = (f"{loaded.problem}; every cron job's history (last run, last "
                            "time handled) starts afresh")
        data = loaded.data or {}
        apps = data.get("apps")
        state: dict[str, dict[str, Record]] = {}
        for app, jobs in (apps.items() if isinstance(apps, dict) else ()):
            for kind, record in (jobs.items() if isinstance(jobs, dict) else ()):
                if not isinstance(record, dict):
                    continue
                last = record.get("last_run")
                if not isinstance(last, dict):
                    record["last_run"] = None
                elif last.get("status") == "running":
                    last["status"] = "interrupted (pikud stopped during the run)"
                state.setdefault(app, {})[kind] = record
        return state


def parse_time(text: object) -> datetime | None:
    """An aware datetime from the file, or None for anything else."""
    if not isinstance(text, str):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None
