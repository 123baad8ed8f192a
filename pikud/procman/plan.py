"""Reconciliation: the pure difference between running and desired processes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    start: tuple[str, ...]      # desired, not running
    stop: tuple[str, ...]       # running, no longer desired
    replace: tuple[str, ...]    # running with a spec that changed


def plan(current: Mapping[str, object], desired: Mapping[str, object]) -> Plan:
    """Compare process name -> spec maps; names keep desired/current order."""
    return Plan(
        start=tuple(name for name in desired if name not in current),
        stop=tuple(name for name in current if name not in desired),
        replace=tuple(name for name in desired
                      if name in current and current[name] != desired[name]),
    )
