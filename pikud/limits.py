"""An app's resource limits: PIKU_MEMORY_MAX, PIKU_CPU_MAX, PIKU_TASKS_MAX, PIKU_NOFILE_MAX.

Each applies to every process of the app (a slot: its main process and all
it starts), and per kind with the kind's name appended in capitals, ``-``
as ``_`` (``PIKU_MEMORY_MAX_WORKER``, ``PIKU_CPU_MAX_MY_QUEUE``), which wins
over the app's. ``max`` lifts a limit (for one kind, or the app when
pikud.toml's [defaults] sets one). How each is enforced is procman/limits.py's
part. Stdlib only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pikud.convert import bad_value, cpus, positive_int, size

MEMORY, CPU, TASKS, NOFILE = "PIKU_MEMORY_MAX", "PIKU_CPU_MAX", "PIKU_TASKS_MAX", "PIKU_NOFILE_MAX"
KEYS = {"memory": MEMORY, "cpu": CPU, "tasks": TASKS, "nofile": NOFILE}
LEAST_MEMORY = 1024 ** 2        # below a MiB not even the shell that starts a process runs
UNLIMITED = "max"
_KEY = re.compile(r"PIKU_(MEMORY|CPU|TASKS|NOFILE)_MAX(?:_([A-Z0-9_]+))?")

Value = int | float | None      # None: no limit (``max``)


def kind_suffix(kind: str) -> str:
    """What a kind's keys end with: ``worker`` -> ``WORKER``, ``my-queue`` -> ``MY_QUEUE``."""
    return kind.upper().replace("-", "_")


def shown(base: str, value: Value) -> str:
    """A limit as ps and push show it: ``256M``, ``50%``, ``64``, ``max``."""
    if value is None:
        return UNLIMITED
    if base == CPU:
        return f"{value * 100:g}%"
    if base == MEMORY:
        for unit, power in (("G", 1024 ** 3), ("M", 1024 ** 2), ("K", 1024)):
            if value % power == 0:
                return f"{int(value) // power}{unit}"
    return str(value)


@dataclass(frozen=True, slots=True)      # slots: one per kind of each app
class Limits:
    """The limits of one kind's processes, and the key each came from (for messages)."""

    memory: int | None = None
    cpu: float | None = None
    tasks: int | None = None
    nofile: int | None = None
    keys: tuple[tuple[str, str], ...] = ()     # field -> the key that set it

    def __bool__(self) -> bool:
        return any(getattr(self, name) is not None for name in KEYS)

    def key(self, name: str) -> str:
        """The key the limit ``name`` (a field) was read from: PIKU_MEMORY_MAX_WORKER, say."""
        return dict(self.keys).get(name, KEYS[name])

    def named(self, name: str) -> str:
        """``PIKU_MEMORY_MAX 256M``: the limit as messages name it."""
        return f"{self.key(name)} {shown(KEYS[name], getattr(self, name))}"

    def table(self) -> dict[str, str]:
        """Each limit in force by its key: ``{"PIKU_MEMORY_MAX_WORKER": "256M"}``, for ps."""
        return {self.key(name): shown(KEYS[name], getattr(self, name)) for name in self.set()}

    def set(self) -> list[str]:
        """The fields that hold a limit, in KEYS order."""
        return [name for name in KEYS if getattr(self, name) is not None]


def _convert(base: str, key: str, value: str) -> Value:
    if value.strip().lower() == UNLIMITED:
        return None
    if base == CPU:
        return cpus(key, value)
    if base == MEMORY:
        amount = size(key, value)
        if amount < LEAST_MEMORY:
            raise bad_value(key, f"at least 1M (or {UNLIMITED})", value)
        return amount
    return positive_int(key, value)


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)      # slots: one per app
class LimitSettings:
    """Every limit key of an app's ENV (and pikud.toml's [defaults]), read and checked."""

    values: tuple[tuple[str, Value], ...] = ()      # key -> value, sorted by key

    def for_kind(self, kind: str) -> Limits:
        """The limits of ``kind``'s processes: its own keys, else the app's."""
        values, suffix = dict(self.values), kind_suffix(kind)
        found: dict[str, Any] = {}
        keys = []
        for name, base in KEYS.items():
            own = f"{base}_{suffix}"
            key = own if own in values else base
            found[name] = values.get(key)
            if key == own:
                keys.append((name, own))
        if not keys and all(value is None for value in found.values()):
            return NO_LIMITS        # most kinds of most apps: one instance for all of them
        return Limits(**found, keys=tuple(keys))

    def stray(self, kinds: Iterable[str]) -> list[str]:
        """Warnings for per-kind keys that name no kind of the Procfile."""
        suffixes = {kind_suffix(kind) for kind in kinds}
        return [f"{key}: the Procfile has no kind {match.group(2).lower()!r}; ignored"
                for key, _ in self.values
                if (match := _KEY.fullmatch(key)) and match.group(2)
                and match.group(2) not in suffixes]


def limit_settings(env: Mapping[str, str], defaults: LimitSettings = LimitSettings(),
                   ) -> LimitSettings:
    """Read every PIKU_*_MAX key of ``env`` over ``defaults``; a bad value is an EnvError."""
    values = dict(defaults.values)
    for key, value in env.items():
        match = _KEY.fullmatch(key)
        if match:
            values[key] = _convert(f"PIKU_{match.group(1)}_MAX", key, value)
    return LimitSettings(tuple(sorted(values.items())))

