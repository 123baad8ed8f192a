"""What an app is wanted to do: run or stay stopped (stdlib only).

The value is what ``state.json`` keeps on disk and what the API reports as
an app's ``state``.
"""

from __future__ import annotations

from enum import Enum


class Desired(Enum):
    RUNNING = "running"
    STOPPED = "stopped"
