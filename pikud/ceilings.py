"""How many processes an app may ask for: the ceilings of pikud.toml.

An app's processes are its supervised slots (a wsgi/asgi slot counts its
server's workers too) and one per cron entry. A change that would go over
``max_processes_per_app``, or take the daemon's total over ``max_processes``,
is refused before anything is written, built or started.
"""

# Design notes: the count is what the app asks for, not what runs now, so a
# Procfile of 10,000 entries is refused whole instead of running out of
# descriptors half-way. During a deploy the old generation runs beside the
# new one until the switch, so the daemon may briefly run up to twice an
# app's count; the ceiling bounds what is kept, the descriptor reserve
# (procman/descriptors.py) what is started.

from __future__ import annotations

import os
import resource
from collections.abc import Mapping
from dataclasses import dataclass

from pikud.appspec import AppSpec, is_cron, process_kinds
from pikud.deploy.servers import CHOICES, slot_processes
from pikud.errors import EnvError, TooManyProcesses

SETTINGS_FILE = "pikud.toml"


@dataclass(frozen=True)
class Ceilings:
    """max_processes_per_app and max_processes (see README, pikud.toml)."""

    per_app: int = 100
    total: int = 1000


def process_counts(spec: AppSpec) -> dict[str, int]:
    """Processes per kind that ``spec`` runs at most at once (cron: one run per entry)."""
    counts = {kind: count * processes_per_slot(spec, kind)
              for kind, count in spec.scaling.items()}
    counts.update((kind, 1) for kind in spec.procfile.entries if is_cron(kind))
    return counts


def processes_per_slot(spec: AppSpec, kind: str) -> int:
    """1, or for a wsgi/asgi slot its server's main process and workers (as started)."""
    return slot_processes(kind, spec.env, bool(spec.settings.idle_timeout)) \
        if kind in CHOICES else 1


def describe(counts: Mapping[str, int], shown: int = 3) -> str:
    """``worker: 600, web: 1``, the largest kinds first, and how many more there are."""
    largest = sorted(counts.items(), key=lambda item: -item[1])
    text = ", ".join(f"{kind}: {count}" for kind, count in largest[:shown])
    return text + (f" and {len(largest) - shown} more kinds" if len(largest) > shown else "")


def admit(spec: AppSpec, ceilings: Ceilings, others: int) -> int:
    """The number of processes ``spec`` runs, or TooManyProcesses naming the setting.

    ``others``: what the daemon's other apps run (or are starting).
    """
    check_limits(spec)
    counts = process_counts(spec)
    total = sum(counts.values())
    asked = (f"{spec.name}: the Procfile and envs/{spec.name}/SCALING ask for {total} "
             f"processes ({describe(counts)})")
    if total > ceilings.per_app:
        raise TooManyProcesses(f"{asked}; max_processes_per_app is {ceilings.per_app} "
                               f"({SETTINGS_FILE})", key="max_processes_per_app")
    if others + total > ceilings.total:
        raise TooManyProcesses(f"{asked}, and the other apps run {others}: {others + total} "
                               f"in all; max_processes is {ceilings.total} ({SETTINGS_FILE})",
                               key="max_processes")
    return total


def check_limits(spec: AppSpec) -> None:
    """Refuse limits no process of the formation could run under: fewer tasks than a
    server's main process and workers, more open files than pikud may give (its hard
    RLIMIT_NOFILE; root may raise it)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    for kind in process_kinds(spec.procfile):
        limits = spec.settings.limits.for_kind(kind)
        least = processes_per_slot(spec, kind)
        if limits.tasks is not None and limits.tasks < least:
            key = limits.key("tasks")
            raise EnvError(f"{key}: a {kind} process runs {least} processes (its server's "
                           f"main process and workers), more than {limits.named('tasks')}",
                           key=key)
        if (limits.nofile is not None and os.geteuid() != 0
                and hard != resource.RLIM_INFINITY and limits.nofile > hard):
            key = limits.key("nofile")
            raise EnvError(f"{key}: {limits.nofile} open files is more than pikud's own hard "
                           f"limit ({hard}); raise LimitNOFILE in pikud.service, or ask less",
                           key=key)
