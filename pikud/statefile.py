"""Reading the daemon's JSON state files: a corrupt one is set aside, never fatal (stdlib only).

Every state file is written atomically (pikud/atomic.py), so a torn file
means a disk or a hand that broke it. Such a file must not stop the daemon,
nor be overwritten: it is renamed ``NAME.corrupt-TIMESTAMP`` beside itself,
logged with one fixed phrase (``corrupt state file set aside:``), and its
reader rebuilds what it can and reports it as a problem of the apps concerned.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Loaded(Generic[T]):
    """What a state file held: ``data`` (None: absent or set aside) and, if set aside, why."""

    data: T | None
    problem: str | None = None


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``NAME.corrupt-TIMESTAMP`` (a suffix ``.N`` if that is taken)."""
    stem = f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    aside, n = path.with_name(stem), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{stem}.{n}")
    path.rename(aside)
    return aside


def load_json(path: Path, parse: Callable[[Any], T], shown: str) -> Loaded[T]:
    """``parse`` of the JSON in ``path``; a file that is not valid for ``parse`` is set aside.

    ``parse`` raises ValueError, TypeError, KeyError, AttributeError or
    OverflowError (``1e400`` where a number goes) on a shape it does not
    accept; JSON nested too deeply is a RecursionError. ``shown`` names the file in messages
    (``pikud/state.json``). A file that cannot be read at all (EIO) is set
    aside too when it can be, and reported either way.
    """
    try:
        return Loaded(parse(json.loads(path.read_text(encoding="utf-8"))))
    except FileNotFoundError:
        return Loaded(None)
    except (OSError, ValueError, TypeError, KeyError, AttributeError, OverflowError,
            RecursionError) as exc:
        reason = f"{exc.__class__.__name__}: {exc}"
    try:
        kept = f"is kept as {set_aside(path).name}"
        log.error("corrupt state file set aside: %s (%s) %s", shown, reason, kept)
    except OSError as exc:
        kept = f"could not be set aside ({exc})"
        log.error("corrupt state file not set aside: %s (%s) %s", shown, reason, kept)
    return Loaded(None, f"{shown} was corrupt ({reason}) and {kept}")


def json_object(data: Any) -> dict[str, Any]:
    """``data`` when it is a JSON object (a parse for load_json), else ValueError."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    return data
