"""Process states and the edges allowed between them (stdlib only).

    STOPPED --spawn--> STARTING --up start_secs--> RUNNING
    STARTING --quick exit, retries left--> BACKOFF --delay--> STARTING
    STARTING --quick exit, no retries left--> FATAL --cool-off--> STARTING
    RUNNING --exit--> EXITED --respawn--> STARTING
    STARTING/RUNNING --stop--> STOPPING --exit--> STOPPED
    BACKOFF/FATAL/EXITED --stop--> STOPPED
    RUNNING --idle--> STOPPING --exit--> IDLE --connection--> STARTING   (scale to zero)
    IDLE --stop--> STOPPED
    any state --supervision failed--> FATAL   (what ran is stopped; retried after the cool-off)

FATAL is where a slot goes when its supervision meets an error it did not
expect (a bug, a failing log follower): from any state, after what the slot
had running is stopped, so that no slot ever sits in a state with neither a
process nor a timer.
"""

from __future__ import annotations

from enum import Enum


class ProcessState(Enum):
    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    EXITED = "EXITED"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    FATAL = "FATAL"
    IDLE = "IDLE"               # stopped for want of traffic; its socket still listens

    def __str__(self) -> str:
        return self.value


S = ProcessState

ALLOWED: dict[ProcessState, frozenset[ProcessState]] = {
    S.STOPPED: frozenset({S.STARTING, S.FATAL}),
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.FATAL, S.STOPPING, S.EXITED}),
    S.RUNNING: frozenset({S.EXITED, S.STOPPING, S.FATAL}),
    S.EXITED: frozenset({S.STARTING, S.STOPPED, S.FATAL}),
    S.BACKOFF: frozenset({S.STARTING, S.STOPPED, S.FATAL}),
    S.STOPPING: frozenset({S.STOPPED, S.IDLE, S.FATAL}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED, S.FATAL}),
    S.IDLE: frozenset({S.STARTING, S.STOPPED, S.FATAL}),
}

# States in which an OS process exists (or may still exist) for the slot.
ALIVE = frozenset({S.STARTING, S.RUNNING, S.STOPPING})


def allowed(old: ProcessState, new: ProcessState) -> bool:
    return new in ALLOWED[old]
