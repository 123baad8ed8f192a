"""The restart policy: pure decisions about an exited process.

A process that exits before it has been up ``start_secs`` is a quick failure.
Quick failures back off exponentially (``base * 2**(n-1)``, capped); after
``start_retries`` of them in a row the process is FATAL and is retried only
after ``fatal_cooloff``. An exit after a stable run resets the count and
respawns at once.
"""

from __future__ import annotations

from dataclasses import dataclass

from pikud.procman.state import ProcessState


@dataclass(frozen=True)
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
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if attempt <= 0:
            return 0.0
        return min(self.cap, self.base * 2 ** (attempt - 1))


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
        return Decision(ProcessState.EXITED, 0.0, 0)
    failures += 1
    if failures > policy.start_retries:
        return Decision(ProcessState.FATAL, policy.fatal_cooloff, failures)
    backoff = Backoff(policy.backoff_base, policy.backoff_max)
    return Decision(ProcessState.BACKOFF, backoff.delay(failures), failures)
