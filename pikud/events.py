"""The daemon's event log: a bounded ring of recent events and live subscribers.

Every process transition and app action becomes one event; ``GET /events``
shows the recent ones and ``?follow=1`` streams new ones.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

Event = dict[str, Any]


class EventLog:
    def __init__(self, keep: int = 1000) -> None:
        self.recent: deque[Event] = deque(maxlen=keep)
        self.subscribers: set[asyncio.Queue[Event]] = set()

    def emit(self, app: str, process: str | None, event: str, message: str) -> Event:
        record = {"time": time.time(), "app": app, "process": process,
                  "event": event, "message": message}
        self.recent.append(record)
        for queue in self.subscribers:
            if queue.full():
                continue        # a slow follower misses events rather than stalling the daemon
            queue.put_nowait(record)
        return record

    def last(self, count: int, app: str | None = None) -> list[Event]:
        chosen = [e for e in self.recent if app is None or e["app"] == app]
        return chosen[-count:] if count > 0 else []

    def subscribe(self) -> asyncio.Queue[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=1000)
        self.subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        self.subscribers.discard(queue)
