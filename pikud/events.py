"""The daemon's event log: a bounded ring of recent events and live subscribers.

Every process transition and app action becomes one event; ``GET /events``
shows the recent ones and ``?follow=1`` streams new ones.

The ring keeps each event as a tuple (an ``Entry``: 72 bytes) and makes the
dict that the API, the followers and a re-exec's record show only when one is
asked for: a full ring of dicts would hold about 160 KiB more.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

Event = dict[str, Any]


class Entry(NamedTuple):
    time: float
    app: str
    process: str | None
    event: str
    message: str


class EventLog:
    def __init__(self, keep: int = 1000) -> None:
        self.recent: deque[Entry] = deque(maxlen=keep)
        self.subscribers: set[asyncio.Queue[Event]] = set()

    def emit(self, app: str, process: str | None, event: str, message: str) -> None:
        entry = Entry(time.time(), app, process, event, message)
        self.recent.append(entry)
        if self.subscribers:
            record = entry._asdict()
            for queue in self.subscribers:
                if queue.full():
                    continue    # a slow follower misses events rather than stalling the daemon
                queue.put_nowait(record)

    def last(self, count: int, app: str | None = None, kinds: Iterable[str] = ()) -> list[Event]:
        """The last ``count`` events, of ``app`` only and of the ``kinds`` only when given."""
        wanted = set(kinds)
        chosen = [e for e in self.recent
                  if (app is None or e.app == app) and (not wanted or e.event in wanted)]
        return [e._asdict() for e in chosen[-count:]] if count > 0 else []

    def restore(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Take back the events a re-exec's record carries (as ``last`` gave them); one
        that does not have an event's fields is left out: they are only shown."""
        for record in records:
            try:
                self.recent.append(Entry(**{name: record[name] for name in Entry._fields}))
            except (KeyError, TypeError):
                continue

    def keep(self, count: int) -> None:
        """Keep at most ``count`` events from now on (pikud.toml's events_kept)."""
        self.recent = deque(self.recent, maxlen=count)

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self.subscribers.discard(queue)
