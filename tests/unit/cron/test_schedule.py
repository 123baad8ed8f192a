"""Cron entries: parsing, errors that name the field, next times, DST (pure, table-driven)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from pikud.cron.schedule import CronEntry, local_zone, next_run, parse_cron, zone
from pikud.errors import CronError, SpecError

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
START = "2026-01-01T00:00:00+00:00"         # a Thursday


def times(expression: str, after: str, tz: ZoneInfo, count: int) -> list[str]:
    """The next ``count`` fire times after ``after``, each computed from the one before."""
    entry = parse_cron("cron1", f"{expression} true")
    moment, found = datetime.fromisoformat(after), []
    for _ in range(count):
        moment = next_run(entry, moment, tz)
        assert moment.tzinfo is tz
        found.append(moment.isoformat())
    return found


# -- every syntax form, in UTC ---------------------------------------------------
SYNTAX = [
    # (expression, the next fire times after START)
    ("* * * * *", ["2026-01-01T00:01", "2026-01-01T00:02", "2026-01-01T00:03"]),
    ("5 * * * *", ["2026-01-01T00:05", "2026-01-01T01:05", "2026-01-01T02:05"]),
    ("5,35 * * * *", ["2026-01-01T00:05", "2026-01-01T00:35", "2026-01-01T01:05"]),
    ("10-12 * * * *", ["2026-01-01T00:10", "2026-01-01T00:11", "2026-01-01T00:12"]),
    ("*/20 * * * *", ["2026-01-01T00:20", "2026-01-01T00:40", "2026-01-01T01:00"]),
    ("10-40/15 * * * *", ["2026-01-01T00:10", "2026-01-01T00:25", "2026-01-01T00:40"]),
    ("0 */6 * * *", ["2026-01-01T06:00", "2026-01-01T12:00", "2026-01-01T18:00"]),
    ("00 05 * * *", ["2026-01-01T05:00", "2026-01-02T05:00", "2026-01-03T05:00"]),
    ("0 9 * * mon-fri", ["2026-01-01T09:00", "2026-01-02T09:00", "2026-01-05T09:00"]),
    ("0 9 * * SUN", ["2026-01-04T09:00", "2026-01-11T09:00", "2026-01-18T09:00"]),
    ("0 9 * * 7", ["2026-01-04T09:00", "2026-01-11T09:00", "2026-01-18T09:00"]),
    ("0 9 * * 0", ["2026-01-04T09:00", "2026-01-11T09:00", "2026-01-18T09:00"]),
    ("0 9 * * 5-7", ["2026-01-02T09:00", "2026-01-03T09:00", "2026-01-04T09:00"]),
    ("0 9 * * Sat,sUn", ["2026-01-03T09:00", "2026-01-04T09:00", "2026-01-10T09:00"]),
    ("0 12 * * 0-7/2", ["2026-01-01T12:00", "2026-01-03T12:00", "2026-01-04T12:00"]),
    ("0 0 1 jan,Jul *", ["2026-07-01T00:00", "2027-01-01T00:00", "2027-07-01T00:00"]),
    ("0 0 1 MAR-may/2 *", ["2026-03-01T00:00", "2026-05-01T00:00", "2027-03-01T00:00"]),
    ("0 0 1 */4 *", ["2026-05-01T00:00", "2026-09-01T00:00", "2027-01-01T00:00"]),
    # both day fields restricted: either matches (Vixie cron)
    ("0 0 13 * fri", ["2026-01-02T00:00", "2026-01-09T00:00", "2026-01-13T00:00"]),
    ("30 4 1,15 * 5", ["2026-01-01T04:30", "2026-01-02T04:30", "2026-01-09T04:30"]),
    ("0 0 31 2 mon", ["2026-02-02T00:00", "2026-02-09T00:00", "2026-02-16T00:00"]),
    # a day field starting with '*' makes both required (Vixie cron; croniter ORs them)
    ("0 0 */10 * fri", ["2026-05-01T00:00", "2026-07-31T00:00", "2026-08-21T00:00"]),
    ("0 0 13 * *", ["2026-01-13T00:00", "2026-02-13T00:00", "2026-03-13T00:00"]),
    ("0 0 29 2 *", ["2028-02-29T00:00", "2032-02-29T00:00", "2036-02-29T00:00"]),
    ("@hourly", ["2026-01-01T01:00", "2026-01-01T02:00", "2026-01-01T03:00"]),
    ("@daily", ["2026-01-02T00:00", "2026-01-03T00:00", "2026-01-04T00:00"]),
    ("@midnight", ["2026-01-02T00:00", "2026-01-03T00:00", "2026-01-04T00:00"]),
    ("@weekly", ["2026-01-04T00:00", "2026-01-11T00:00", "2026-01-18T00:00"]),
    ("@monthly", ["2026-02-01T00:00", "2026-03-01T00:00", "2026-04-01T00:00"]),
    ("@yearly", ["2027-01-01T00:00", "2028-01-01T00:00", "2029-01-01T00:00"]),
    ("@annually", ["2027-01-01T00:00", "2028-01-01T00:00", "2029-01-01T00:00"]),
    ("@DAILY", ["2026-01-02T00:00", "2026-01-03T00:00", "2026-01-04T00:00"]),
]


@pytest.mark.parametrize(("expression", "expected"), SYNTAX, ids=[row[0] for row in SYNTAX])
def test_next_times(expression: str, expected: list[str]) -> None:
    assert times(expression, START, UTC, len(expected)) == [t + ":00+00:00" for t in expected]


# -- an independent oracle: scan every minute ------------------------------------
def _weekday(moment: datetime) -> int:
    return (moment.weekday() + 1) % 7      # cron: 0 is Sunday


ORACLE: list[tuple[str, Callable[[datetime], bool]]] = [
    ("*/15 9-17 * * mon-fri", lambda t: t.minute % 15 == 0 and 9 <= t.hour <= 17
     and _weekday(t) in (1, 2, 3, 4, 5)),
    ("7 */5 1-10 * *", lambda t: t.minute == 7 and t.hour % 5 == 0 and t.day <= 10),
    ("0 12 1,15 * sun", lambda t: t.minute == 0 and t.hour == 12
     and (t.day in (1, 15) or _weekday(t) == 0)),
    ("0 0 * * */3", lambda t: t.minute == 0 and t.hour == 0 and _weekday(t) in (0, 3, 6)),
    ("*/10 * * * *", lambda t: t.minute % 10 == 0),
    # Debian's cron reads a range ending with sun as ending on the week's last day.
    ("30 6 * * mon-sun", lambda t: t.minute == 30 and t.hour == 6),
    ("0 4 * * fri-sun", lambda t: t.minute == 0 and t.hour == 4 and _weekday(t) in (5, 6, 0)),
]


WINDOWS = [(UTC, "2026-03-07"), (BERLIN, "2026-03-28"), (BERLIN, "2026-10-24"),
           (NEW_YORK, "2026-03-07"), (NEW_YORK, "2026-10-31")]


@pytest.mark.parametrize(("expression", "matches"), ORACLE, ids=[row[0] for row in ORACLE])
@pytest.mark.parametrize(("tz", "day"), WINDOWS, ids=[f"{tz}-{day}" for tz, day in WINDOWS])
def test_next_run_agrees_with_a_minute_scan(expression: str, matches: Callable[[datetime], bool],
                                             tz: ZoneInfo, day: str) -> None:
    """Every real minute of three days around a DST change, read on the zone's wall clock.

    For wildcard jobs the scan is Debian's rule itself: a skipped wall time
    never shows up, a repeated one shows up twice.
    """
    entry = parse_cron("cron1", f"{expression} true")
    moment = datetime.fromisoformat(day).replace(tzinfo=tz).astimezone(dt.UTC)
    end = moment + timedelta(days=3)
    expected = []
    scan = moment + timedelta(minutes=1)
    while scan < end:
        if matches(scan.astimezone(tz)):
            expected.append(scan)
        scan += timedelta(minutes=1)
    found = []
    while True:
        moment = next_run(entry, moment, tz)
        if moment >= end:
            break
        found.append(moment.astimezone(dt.UTC))   # == across zones is False in a fold
    assert found == expected


# -- daylight saving time, Debian's rules ----------------------------------------
DST = [
    # Berlin, spring: 02:00 CET -> 03:00 CEST on 29 March 2026
    ("30 2 * * *", BERLIN, "2026-03-28T12:00:00+01:00",    # fixed: at the end of the gap
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"]),
    ("0,30 2 * * *", BERLIN, "2026-03-28T12:00:00+01:00",  # two skipped times: one run
     ["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"]),
    ("30 * * * *", BERLIN, "2026-03-29T01:00:00+01:00",    # wildcard: the gap is skipped
     ["2026-03-29T01:30:00+01:00", "2026-03-29T03:30:00+02:00"]),
    # Berlin, autumn: 03:00 CEST -> 02:00 CET on 25 October 2026
    ("30 2 * * *", BERLIN, "2026-10-24T12:00:00+02:00",    # fixed: once, first pass
     ["2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"]),
    ("30 2 * * *", BERLIN, "2026-10-25T02:10:00+01:00",    # asked during the second pass
     ["2026-10-26T02:30:00+01:00"]),
    ("30 * * * *", BERLIN, "2026-10-25T01:00:00+02:00",    # wildcard: both passes
     ["2026-10-25T01:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-25T02:30:00+01:00",
      "2026-10-25T03:30:00+01:00"]),
    ("*/20 2 * * *", BERLIN, "2026-10-25T02:50:00+02:00",  # asked late in the first pass
     ["2026-10-25T02:00:00+01:00", "2026-10-25T02:20:00+01:00", "2026-10-25T02:40:00+01:00",
      "2026-10-26T02:00:00+01:00"]),
    # New York, spring: 02:00 EST -> 03:00 EDT on 8 March 2026
    ("30 2 * * *", NEW_YORK, "2026-03-07T12:00:00-05:00",
     ["2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"]),
    ("*/30 * * * *", NEW_YORK, "2026-03-08T01:00:00-05:00",
     ["2026-03-08T01:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:30:00-04:00"]),
    ("@daily", NEW_YORK, "2026-03-07T12:00:00-05:00",     # midnight is not in the gap
     ["2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00"]),
    # New York, autumn: 02:00 EDT -> 01:00 EST on 1 November 2026
    ("30 1 * * *", NEW_YORK, "2026-10-31T12:00:00-04:00",
     ["2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"]),
    ("15 * * * *", NEW_YORK, "2026-11-01T00:00:00-04:00",
     ["2026-11-01T00:15:00-04:00", "2026-11-01T01:15:00-04:00", "2026-11-01T01:15:00-05:00",
      "2026-11-01T02:15:00-05:00"]),
    ("@hourly", NEW_YORK, "2026-11-01T00:30:00-04:00",    # @hourly counts as wildcard
     ["2026-11-01T01:00:00-04:00", "2026-11-01T01:00:00-05:00", "2026-11-01T02:00:00-05:00"]),
]


@pytest.mark.parametrize(("expression", "tz", "after", "expected"), DST,
                         ids=[f"{row[1]}-{row[0]}-{row[2]}" for row in DST])
def test_daylight_saving(expression: str, tz: ZoneInfo, after: str, expected: list[str]) -> None:
    assert times(expression, after, tz, len(expected)) == expected


def test_after_given_in_the_zone_itself_keeps_its_fold() -> None:
    """Two datetimes of one zone compare by wall time; the second pass must not look earlier."""
    entry = parse_cron("cron1", "*/30 * * * * true")
    second_pass = datetime(2026, 11, 1, 1, 20, tzinfo=NEW_YORK, fold=1)
    assert next_run(entry, second_pass, NEW_YORK).isoformat() == "2026-11-01T01:30:00-05:00"


def test_reboot_is_never_scheduled() -> None:
    with pytest.raises(ValueError, match="@reboot"):
        next_run(parse_cron("cron1", "@reboot true"), datetime.now(dt.UTC), UTC)


# -- what the parser keeps -------------------------------------------------------
PARSED = [
    # (entry, expression, command, fixed_time, reboot)
    ("*/5   *  * * *   python  jobs.py --all", "*/5 * * * *", "python  jobs.py --all",
     False, False),
    ("30 2 * * 1-5 ./backup.sh", "30 2 * * 1-5", "./backup.sh", True, False),
    ("30 * * * * ./hourly", "30 * * * *", "./hourly", False, False),
    ("0-30/10 3 * * * ./x", "0-30/10 3 * * *", "./x", True, False),
    ("@Daily ./nightly > out 2>&1", "@daily", "./nightly > out 2>&1", True, False),
    ("@hourly ./h", "@hourly", "./h", False, False),
    ("@reboot ./warm-cache", "@reboot", "./warm-cache", False, True),
]


@pytest.mark.parametrize(("text", "expression", "command", "fixed", "reboot"), PARSED,
                         ids=[row[0] for row in PARSED])
def test_parse(text: str, expression: str, command: str, fixed: bool, reboot: bool) -> None:
    entry = parse_cron("cron1", text)
    assert isinstance(entry, CronEntry)
    assert (entry.kind, entry.expression, entry.command) == ("cron1", expression, command)
    assert (entry.fixed_time, entry.reboot) == (fixed, reboot)


# -- invalid entries: each error names the field ----------------------------------
INVALID = [
    ("61 * * * * x", "cron1: minute field '61': 61 is out of range 0-59"),
    ("* 24 * * * x", "cron1: hour field '24': 24 is out of range 0-23"),
    ("* * 0 * * x", "cron1: day-of-month field '0': 0 is out of range 1-31"),
    ("* * 32 * * x", "cron1: day-of-month field '32': 32 is out of range 1-31"),
    ("* * * 13 * x", "cron1: month field '13': 13 is out of range 1-12"),
    ("* * * * 8 x", "cron1: day-of-week field '8': 8 is out of range 0-7"),
    ("* * * foo * x", "cron1: month field 'foo': 'foo' is not a number or a name (jan-dec)"),
    ("* * * * funday x",
     "cron1: day-of-week field 'funday': 'funday' is not a number or a name (sun-sat)"),
    ("* * jan * * x", "cron1: day-of-month field 'jan': 'jan' is not a number"),
    ("5-1 * * * * x", "cron1: minute field '5-1': range '5-1' runs backwards (5 > 1)"),
    ("0 0 * * 5-0 x", "cron1: day-of-week field '5-0': range '5-0' runs backwards "
     "(5 > 0); Sunday is also 7"),
    ("*/0 * * * * x", "cron1: minute field '*/0': step 0 is out of range 1-59"),
    ("*/x * * * * x", "cron1: minute field '*/x': step 'x' is not a number"),
    ("5/15 * * * * x", "cron1: minute field '5/15': '5/15' is not standard cron; write "
     "'5-59/15' for every 15 from 5"),
    ("1,,2 * * * * x", "cron1: minute field '1,,2': empty item in the list"),
    ("1- * * * * x", "cron1: minute field '1-': a range needs a value on both sides of '-'"),
    ("0 0 L * * x", "cron1: day-of-month field 'L': 'L': L, W, #, ? and H are not standard "
     "cron syntax"),
    ("0 0 * * 1#2 x", "cron1: day-of-week field '1#2': '1#2': L, W, #, ? and H are not "
     "standard cron syntax"),
    ("0 0 31 2 * x", "cron1: '0 0 31 2 *' never runs (day 31 does not exist in February)"),
    ("0 0 30 feb * x", "cron1: '0 0 30 feb *' never runs (day 30 does not exist in February)"),
    ("0 0 30,31 2 * x", "cron1: '0 0 30,31 2 *' never runs (days 30, 31 do not exist in "
     "February)"),
    ("0 0 31 apr,jun,sep,nov * x", "cron1: '0 0 31 apr,jun,sep,nov *' never runs (day 31 "
     "does not exist in April, June, September or November)"),
    ("0 0 31 2 */2 x", "cron1: '0 0 31 2 */2' never runs (day 31 does not exist in February)"),
    ("* * * * * * x", "cron1: the command starts with '*', which looks like a sixth schedule "
     "field; cron entries have 5 fields (no seconds or years)"),
    ("* * * * *", "cron1: empty command after the schedule '* * * * *'"),
    ("* * * x", "cron1: expected 5 schedule fields (minute hour day-of-month month "
     "day-of-week) and a command, got '* * * x'"),
    ("", "cron1: empty entry; expected 'minute hour day-of-month month day-of-week command' "
     "or '@macro command'"),
    ("@daily", "cron1: empty command after '@daily'"),
    ("@fortnightly x", "cron1: unknown macro '@fortnightly' (use @yearly, @annually, "
     "@monthly, @weekly, @daily, @midnight, @hourly or @reboot)"),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[row[0] or "empty" for row in INVALID])
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(CronError) as caught:
        parse_cron("cron1", text, "Procfile", None)
    assert str(caught.value) == f"Procfile: {message}"
    assert caught.value.key == "cron1"


def test_error_carries_file_and_line_and_is_a_spec_error() -> None:
    with pytest.raises(SpecError) as caught:
        parse_cron("cron1", "61 * * * * x", "apps/a/Procfile", 3)
    assert str(caught.value) == ("apps/a/Procfile, line 3: cron1: minute field '61': "
                                 "61 is out of range 0-59")
    assert (caught.value.code, caught.value.line) == ("invalid_spec", 3)


# -- time zones --------------------------------------------------------------------
def test_zone_names() -> None:
    assert zone("Europe/Berlin") is BERLIN
    assert zone(":America/New_York") is NEW_YORK        # glibc's leading colon
    assert zone(None) is local_zone()
    for bad in ("Mars/Olympus", "Europe", "../etc/passwd", "CET-1CEST"):
        with pytest.raises(CronError, match=r"^TZ: unknown time zone") as caught:
            zone(bad)
        assert caught.value.key == "TZ"
