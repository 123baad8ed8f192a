"""Cron entries: parse and validate them, and compute when they next fire.

A Procfile kind starting with ``cron`` holds ``m h dom mon dow command`` or
``@macro command``. Each field is validated here so that an error can name
the field (croniter's messages do not); croniter then iterates the
normalised expression.

Design notes:
- Syntax is standard cron's: ``*``, ``N``, ``N-M``, lists, ``*/S`` and
  ``N-M/S``; month and weekday names (``jan``, ``mon``, any case, also in
  ranges); ``0`` or ``7`` for Sunday, and a range that ends with ``sun`` ends
  on the week's last day (``mon-sun``, as Debian's cron reads it). Extensions
  that croniter accepts are
  rejected: ``N/S`` (the error suggests ``N-max/S``), seconds and years
  fields, ``L``, ``W``, ``#``, ``?`` and ``H``. A backwards range is an error.
- Day matching follows Vixie cron: when the day-of-month or the day-of-week
  field starts with ``*``, a day must match both; otherwise either. croniter
  is handed each field as an explicit list (its own range handling has
  quirks: ``7-7`` runs daily) with ``day_or`` set from that rule.
- An expression that can never fire (``31 2``: the 31st of February) is an
  error. Only day-of-month x month can be impossible: any date that exists
  falls on every weekday within a 28-year leap cycle.
- ``next_run`` walks naive wall-clock times in the zone and maps each to
  instants with Debian's DST rules: a time in the spring gap runs at the end
  of the gap for fixed-time jobs and is skipped by wildcard ones; a repeated
  autumn time runs once (first occurrence) for fixed-time jobs and twice for
  wildcard ones. "Fixed-time" means no ``*`` in the minute or hour field.
- A wildcard entry can fall only in DST gaps (``* 2 25-31 3 */7``: 2 a.m. on
  the last Sunday of March, which Europe/Berlin skips every year); it never
  runs there. ``next_run`` looks ``HORIZON`` ahead (every date pattern recurs
  within it: 29 February on a given weekday at least every 40 years) and says
  None, and ``check_fires`` turns that into an error naming the kind and zone.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from pikud.convert import whole_number
from pikud.errors import CronError

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from croniter import croniter

MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
REBOOT = "@reboot"
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
DAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
MONTH_NAMES = ("January", "February", "March", "April", "May", "June", "July", "August",
               "September", "October", "November", "December")
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)   # February 29: leap years
HORIZON = timedelta(days=100 * 366)     # next_run looks no further (see the design notes)


@dataclass(frozen=True)
class _Field:
    name: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    name_base: int = 0                  # the number of names[0]


FIELDS = (
    _Field("minute", 0, 59), _Field("hour", 0, 23), _Field("day-of-month", 1, 31),
    _Field("month", 1, 12, MONTHS, 1), _Field("day-of-week", 0, 7, DAYS, 0),
)
_NUMBER = re.compile(r"[0-9]+")
_NONSTANDARD = re.compile(r"[LW#?H]", re.IGNORECASE)
_FIELD_LIKE = re.compile(r"[0-9*][0-9*,/-]*")


@dataclass(frozen=True)
class CronEntry:
    """One validated cron entry of a Procfile."""

    kind: str
    expression: str                     # as written, spaces normalised: "*/5 * * * *", "@daily"
    command: str
    reboot: bool = False                # @reboot: run once when the app starts, never scheduled
    fields: str = ""                    # croniter form: explicit lists, macros expanded
    day_or: bool = False                # Vixie: a day matches either day field
    fixed_time: bool = False            # no '*' in minute or hour: DST moves it (Debian)


class _FieldError(Exception):
    pass


def parse_cron(kind: str, entry: str, file: str = "Procfile", line: int | None = None
               ) -> CronEntry:
    """Parse ``m h dom mon dow command`` or ``@macro command``; CronError names the field."""
    def fail(message: str) -> CronError:
        return CronError(f"{kind}: {message}", file=file, line=line, key=kind)

    text = entry.strip()
    if not text:
        raise fail("empty entry; expected 'minute hour day-of-month month day-of-week command' "
                   "or '@macro command'")
    if text.startswith("@"):
        macro, *rest = text.split(None, 1)
        command, name = rest[0].strip() if rest else "", macro.lower()
        if name != REBOOT and name not in MACROS:
            raise fail(f"unknown macro {macro!r} (use {', '.join(MACROS)} or {REBOOT})")
        if not command:
            raise fail(f"empty command after {macro!r}")
        if name == REBOOT:
            return CronEntry(kind, name, command, reboot=True)
        written, raw = name, MACROS[name].split()
    else:
        parts = text.split(None, 5)
        if len(parts) < 5:
            raise fail(f"expected 5 schedule fields (minute hour day-of-month month "
                       f"day-of-week) and a command, got {text!r}")
        if len(parts) == 5:
            raise fail(f"empty command after the schedule {' '.join(parts)!r}")
        raw, command = parts[:5], parts[5].strip()
        written = " ".join(raw)
        first = command.split(None, 1)[0]
        if _FIELD_LIKE.fullmatch(first):
            raise fail(f"the command starts with {first!r}, which looks like a sixth schedule "
                       "field; cron entries have 5 fields (no seconds or years)")
    sets: list[frozenset[int]] = []
    for field, value in zip(FIELDS, raw, strict=True):
        try:
            sets.append(_parse_field(field, value))
        except _FieldError as error:
            raise fail(f"{field.name} field {value!r}: {error}") from None
    dom_star, dow_star = raw[2].startswith("*"), raw[4].startswith("*")
    never = _impossible_days(sets[2], sets[3]) if dom_star or dow_star else None
    if never:
        raise fail(f"{written!r} never runs ({never})")
    fields = " ".join(value if value == "*" else ",".join(map(str, sorted(values)))
                      for value, values in zip(raw, sets, strict=True))
    cron = CronEntry(kind, written, command, fields=fields, day_or=not (dom_star or dow_star),
                     fixed_time="*" not in raw[0] and "*" not in raw[1])
    try:
        _iterator(cron.fields, cron.day_or).get_next(datetime)
    except ValueError as error:     # CroniterError too; a safety net: the checks above should do
        raise fail(f"{written!r}: {error}") from None
    return cron


def _parse_field(field: _Field, text: str) -> frozenset[int]:
    """The values one field selects; day-of-week 7 becomes 0 (Sunday)."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise _FieldError("empty item in the list")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise _FieldError(f"step {step_text!r} is not a number")
            number = whole_number(step_text, field.high)
            if number is None or number < 1:
                raise _FieldError(f"step {step_text} is out of range 1-{field.high}")
            step = number
        if base == "*":
            start, end = field.low, field.high if field.name != "day-of-week" else 6
        elif "-" in base:
            first, _, last = base.partition("-")
            start, end = _value(field, first), _value(field, last)
            if field.name == "day-of-week" and last.lower() == "sun":
                end = 7         # Debian's cron: mon-sun is every day, Sunday last
            if start > end:
                hint = "; Sunday is also 7" if field.name == "day-of-week" and end == 0 else ""
                raise _FieldError(f"range {base!r} runs backwards ({start} > {end}){hint}")
        else:
            start = end = _value(field, base)
            if slash:
                raise _FieldError(f"{item!r} is not standard cron; write "
                                  f"'{base}-{field.high}/{step}' for every {step} from {base}")
        values.update(range(start, end + 1, step))
    if field.name == "day-of-week" and 7 in values:
        values.discard(7)
        values.add(0)
    return frozenset(values)


def _value(field: _Field, token: str) -> int:
    if _NUMBER.fullmatch(token):
        number = whole_number(token, field.high)
        if number is None or number < field.low:
            raise _FieldError(f"{token} is out of range {field.low}-{field.high}")
        return number
    if field.names and token.lower() in field.names:
        return field.names.index(token.lower()) + field.name_base
    if not token:
        raise _FieldError("a range needs a value on both sides of '-'")
    if _NONSTANDARD.search(token):
        raise _FieldError(f"{token!r}: L, W, #, ? and H are not standard cron syntax")
    names = f" or a name ({field.names[0]}-{field.names[-1]})" if field.names else ""
    raise _FieldError(f"{token!r} is not a number{names}")


def _impossible_days(days: frozenset[int], months: frozenset[int]) -> str | None:
    """Why no listed day exists in any listed month (only 29 February needs a leap year)."""
    if any(day <= DAYS_IN_MONTH[month - 1] for day in days for month in months):
        return None
    day_list = ", ".join(map(str, sorted(days)))
    names = [MONTH_NAMES[month - 1] for month in sorted(months)]
    where = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    if len(days) == 1:
        return f"day {day_list} does not exist in {where}"
    return f"days {day_list} do not exist in {where}"


# --- time zones -----------------------------------------------------------
def zone_type() -> type[ZoneInfo]:
    """zoneinfo's ZoneInfo, imported on first use (an app with cron entries): zoneinfo
    brings sysconfig, and the resting daemon stays light; see README."""
    from zoneinfo import ZoneInfo
    return ZoneInfo


def zone(name: str | None) -> ZoneInfo:
    """The IANA zone ``name`` (an app's TZ), or the server's zone when None."""
    if name is None:
        return local_zone()
    key = name.removeprefix(":")
    try:
        return zone_type()(key)
    except (KeyError, ValueError, OSError):     # a missing zone: ZoneInfoNotFoundError, a KeyError
        raise CronError(f"TZ: unknown time zone {name!r} (expected an IANA name such as "
                        "Europe/Berlin or UTC)", key="TZ") from None


@lru_cache(maxsize=1)
def local_zone() -> ZoneInfo:
    """The server's zone: the daemon's TZ, else /etc/localtime, else UTC (read once)."""
    zone_info = zone_type()
    name = os.environ.get("TZ", "").removeprefix(":")
    if name:
        try:
            return zone_info(name)
        except (KeyError, ValueError, OSError):
            pass
    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve(strict=True))
        if "/zoneinfo/" in target:
            return zone_info(target.split("/zoneinfo/", 1)[1])
    except (OSError, ValueError, KeyError):
        pass
    try:
        with open(localtime, "rb") as f:
            return zone_info.from_file(f, key="localtime")
    except (OSError, ValueError):
        return zone_info("UTC")


# --- next fire time -------------------------------------------------------
@lru_cache(maxsize=4096)
def _iterator(fields: str, day_or: bool) -> croniter:
    """One reusable croniter per expression (parsing costs 4x a step); callers set_current()."""
    from croniter import croniter  # here: only a daemon with cron entries pays its import
    return croniter(fields, datetime(2000, 1, 1), day_or=day_or)


def check_fires(entry: CronEntry, tz: ZoneInfo) -> None:
    """Refuse an entry that never runs in ``tz`` (all its times fall in DST gaps)."""
    if not entry.reboot and next_run(entry, datetime.now(UTC), tz) is None:
        raise CronError(f"{entry.kind}: {entry.expression!r} never runs in {tz.key}: every "
                        "time it names is skipped by a daylight saving change", key=entry.kind)


def next_run(entry: CronEntry, after: datetime, tz: ZoneInfo) -> datetime | None:
    """The first instant strictly after ``after`` (aware) at which ``entry`` fires, in ``tz``.

    None when it does not fire within ``HORIZON``: its times all fall in DST gaps.
    """
    if entry.reboot:
        raise ValueError(f"{entry.kind}: @reboot entries are not scheduled")
    after = after.astimezone(UTC)  # compare in UTC: within one zone, fold is ignored
    local = after.astimezone(tz)
    wall = local.replace(tzinfo=None, fold=0)
    start = wall
    first_pass, second_pass = _offsets(wall, tz)
    if local.fold == 0 and first_pass != second_pass and first_pass and second_pass:
        # In the first pass of a repeated hour: the second pass of earlier wall times is ahead.
        start = wall - (first_pass - second_pass)
    it = _iterator(entry.fields, entry.day_or)
    it.set_current(start)
    found: list[datetime] = []
    last = start + HORIZON      # a wall time after which nothing earlier than found can come
    while True:
        candidate: datetime = it.get_next(datetime)
        if candidate > last:
            return min(found).astimezone(tz) if found else None
        first = candidate.replace(tzinfo=tz, fold=0).astimezone(UTC)
        second = candidate.replace(tzinfo=tz, fold=1).astimezone(UTC)
        if first == second:         # an ordinary wall time: one instant, and all later ones follow
            if first > after:
                return min([first, *found]).astimezone(tz)
            continue
        if first > second:
            # Spring gap: fixed-time jobs run as soon as the gap is over; wildcard ones skip it.
            instants = [_gap_end(second, first, tz)] if entry.fixed_time else []
        else:
            # Autumn repeat: fixed-time jobs run at the first pass only; wildcard ones at both.
            instants = [first] if entry.fixed_time else [first, second]
        if not found and any(i > after for i in instants):
            last = candidate + timedelta(days=2)    # past this DST change: later times map later
        found.extend(i for i in instants if i > after)


def _offsets(wall: datetime, tz: ZoneInfo) -> tuple[timedelta | None, timedelta | None]:
    """UTC offsets of a naive wall time read as first and as second pass (differ near DST)."""
    return (wall.replace(tzinfo=tz, fold=0).utcoffset(),
            wall.replace(tzinfo=tz, fold=1).utcoffset())


def _gap_end(low: datetime, high: datetime, tz: ZoneInfo) -> datetime:
    """The second (UTC) the clock jumped, between ``low`` (old offset) and ``high`` (new)."""
    lo, hi = math.floor(low.timestamp()), math.ceil(high.timestamp())
    old = datetime.fromtimestamp(lo, tz).utcoffset()
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if datetime.fromtimestamp(mid, tz).utcoffset() == old:
            lo = mid
        else:
            hi = mid
    return datetime.fromtimestamp(hi, UTC)
