"""Setting values as typed values: tiny converters that name the key. Stdlib only.

Each converter takes ``(key, value)`` and returns the value or raises an
EnvError that names the key, the expected form and the value, so proxy, cron,
deploy and the app settings read their ENV keys the same strict way.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pikud.errors import EnvError

MAX_NUMBER = 10 ** 18 - 1       # far above any count, size or time a setting holds
LONGEST = 7 * 24 * 3600.0       # the longest duration a setting may give
MOST_CPUS = 4096                # more CPUs than any machine pikud runs on has
UNWRITABLE = {"\n": "a newline", "\r": "a carriage return", "\x00": "a NUL byte"}
"""What no one-line value (an ENV line, a path list) can hold, with its name."""

_COUNT = re.compile(r"[0-9]+")
_SECONDS = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m)?", re.IGNORECASE)
_SIZE = re.compile(r"([0-9]+)\s*(?:([kmg])(?:i?b)?|b)?", re.IGNORECASE)
_UNITS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0}
_POWERS = {None: 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
_URL_PATH = re.compile(r"/[A-Za-z0-9._~!$&()*+,;=:@%/?-]*")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def whole_number(text: str, maximum: int = MAX_NUMBER) -> int | None:
    """``text`` (ASCII digits only) as an int if it is at most ``maximum``, else None.

    The digits are counted first: int() raises ValueError on 4,301 or more.
    """
    if not _COUNT.fullmatch(text):
        return None
    digits = text.lstrip("0") or "0"
    if len(digits) > len(str(maximum)) or int(digits) > maximum:
        return None
    return int(digits)


def bad_value(key: str, expected: str, value: str) -> EnvError:
    """The error every converter raises: ``KEY: expected ..., got 'value'``."""
    return EnvError(f"{key}: expected {expected}, got {value!r}", key=key)


def boolean(key: str, value: str) -> bool:
    word = value.strip().lower()
    if word in _TRUE or word in _FALSE:
        return word in _TRUE
    raise bad_value(key, "true/false, yes/no, on/off or 1/0", value)


def _integer(key: str, value: str, minimum: int, expected: str) -> int:
    number = whole_number(value.strip())
    if number is None or number < minimum:
        raise bad_value(key, expected, value)
    return number


def positive_int(key: str, value: str) -> int:
    return _integer(key, value, 1, "a whole number of 1 or more")


def nonneg_int(key: str, value: str) -> int:
    return _integer(key, value, 0, "a whole number of 0 or more")


def seconds(key: str, value: str) -> float:
    """A duration in seconds: ``2``, ``0.5``, ``250ms``, ``1.5s`` or ``2m``."""
    match = _SECONDS.fullmatch(value.strip())
    if match is None:
        raise bad_value(key, "a number of seconds (optionally with s, ms or m)", value)
    unit = match.group(2).lower() if match.group(2) else None
    duration = float(match.group(1)) * _UNITS[unit]
    if duration > LONGEST:          # every wait has an end: no timer of years, or of inf
        raise bad_value(key, f"a number of seconds up to 7 days ({LONGEST:g})", value)
    return duration


def size(key: str, value: str) -> int:
    """Bytes: ``1048576``, ``512K``, ``1M``, ``2GiB`` (powers of 1024)."""
    match = _SIZE.fullmatch(value.strip())
    number = whole_number(match.group(1)) if match else None
    if match is None or number is None:
        raise bad_value(key, "a size in bytes (optionally with K, M or G)", value)
    unit = match.group(2).lower() if match.group(2) else None
    return number * _POWERS[unit]


def url_path(key: str, value: str) -> str:
    """An absolute URL path with a query at most: no spaces, control characters or quotes."""
    if not _URL_PATH.fullmatch(value):
        raise bad_value(key, "a URL path like /health (printable, no spaces or quotes)", value)
    return value


def relative_paths(key: str, value: str) -> tuple[str, ...]:
    """Comma-separated paths inside the app dir; an empty value means none."""
    if any(char in value for char in UNWRITABLE):
        raise bad_value(key, "paths on one line", value)
    if not value.strip():
        return ()
    paths = []
    for item in (part.strip() for part in value.split(",")):
        if not item:
            raise bad_value(key, "comma-separated paths without empty items", value)
        path = PurePosixPath(item)
        if path.is_absolute() or ".." in path.parts:
            raise EnvError(f"{key}: {item!r} must be a path inside the app directory "
                           "(relative, without '..')", key=key)
        paths.append(str(path))
    return tuple(paths)


def cpus(key: str, value: str) -> float:
    """A share of the CPUs, as CPUs: ``50%`` (of one CPU) is 0.5, ``2`` or ``200%`` is 2."""
    text = value.strip()
    percent = text.endswith("%")
    match = re.fullmatch(r"[0-9]{1,6}(?:\.[0-9]{1,3})?", text.removesuffix("%").strip())
    amount = float(match.group()) / (100 if percent else 1) if match else 0.0
    if not 0.01 <= amount <= MOST_CPUS:
        raise bad_value(key, f"a percentage of one CPU (50%, 200%) or a number of CPUs "
                        f"(0.5, 2), from 1% to {MOST_CPUS} CPUs", value)
    return amount
