"""The restart policy: pure decisions about an exited process.

A process that exits before it has been up ``start_secs`` is a quick failure.
Quick failures back off exponentially (``base * 2**(n-1)``, capped); after
``start_retries`` of them in a row the process is FATAL and is retried only
after ``fatal_cooloff``. An exit after a stable run resets the count and
respawns at once.

Design notes: whatever the settings, one slot spawns at most once every
``MIN_INTERVAL`` (spawn to spawn). With ``PIKU_BACKOFF_BASE=0`` (or
``PIKU_START_SECS=0``) a command that fails at once was otherwise respawned
some 300 times a second: a core burnt, two log lines per try in the daemon's
log, the app's log and /events, for nothing a tenth of a second changes.
The floor is a constant, not a setting: nothing useful needs a faster loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pikud.procman.state import ProcessState

MIN_INTERVAL = 0.1      # seconds from one spawn of a slot to its next, at least


@dataclass(frozen=True, slots=True)      # slots: one per app
class RestartPolicy:
    start_secs: float = 1.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    start_retries: int = 5
    fatal_cooloff: float = 300.0


@dataclass(frozen=True)
class Backoff:
    base: float
    cap: float

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based), for any ``attempt``.

        The doubling stops at the cap, so no attempt count overflows a float
        (``2 ** 1024`` did, after 1,024 quick failures).
        """
        if attempt <= 0:
            return 0.0
        try:
            return min(self.cap, math.ldexp(self.base, attempt - 1))
        except OverflowError:           # beyond the largest float, so beyond the cap
            return self.cap


@dataclass(frozen=True)
class Decision:
    state: ProcessState       # EXITED (respawn now), BACKOFF or FATAL
    delay: float              # seconds before the next spawn
    failures: int             # quick failures in a row after this exit


def decide(uptime: float, failures: int, policy: RestartPolicy) -> Decision:
    """What to do with a process that exited on its own after ``uptime`` seconds.

    ``failures`` is the count of quick failures in a row before this exit.
    """
    if uptime >= policy.start_secs:
        return Decision(ProcessState.EXITED, floored(0.0, uptime), 0)
    failures += 1
    if failures > policy.start_retries:
        return Decision(ProcessState.FATAL, floored(policy.fatal_cooloff, uptime), failures)
    backoff = Backoff(policy.backoff_base, policy.backoff_max)
    return Decision(ProcessState.BACKOFF, floored(backoff.delay(failures), uptime), failures)


def floored(delay: float, uptime: float) -> float:
    """``delay``, made long enough that the next spawn comes MIN_INTERVAL after the last
    (to the millisecond, so that log lines stay readable)."""
    return max(delay, round(MIN_INTERVAL - uptime, 3))
