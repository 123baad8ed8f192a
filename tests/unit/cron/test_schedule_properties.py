"""Properties of cron lines under arbitrary input (hypothesis).

parse_cron either returns an entry or raises a CronError that names the kind,
file and line, and quotes what it refused. An entry it accepts has a next
time in any zone, or check_fires refuses it there; next_run never loops on.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from pikud.cron.schedule import MACROS, CronEntry, check_fires, next_run, parse_cron
from pikud.errors import CronError
from tests.conftest import examples
from tests.strategies import FILE_CHAR, HUGE, spliced

ZONES = [ZoneInfo(name) for name in ("UTC", "Europe/Berlin", "America/New_York",
                                     "Australia/Lord_Howe", "Pacific/Apia")]
FIELD_TOKENS = ["*", "*/5", "/", "-", ",", "0", "1", "2", "7", "12", "23", "25", "29", "31",
                "59", "60", "00", "jan", "FEB", "sun", "Mon", "L", "W", "#", "?", "H", HUGE]
ITEM = st.sampled_from(["*", "0", "1", "2", "3", "5", "7", "10", "12", "15", "23", "28", "29",
                        "30", "31", "45", "59", "feb", "mar", "oct", "sun", "sat"])
STEP = st.sampled_from(["", "/1", "/2", "/7", "/15"])
VALID_FIELD = st.lists(st.tuples(ITEM, st.sampled_from(["", "-12", "-31", "-sat"]), STEP).map(
    lambda parts: parts[0] + (parts[1] if parts[0] != "*" else "") + parts[2]),
    min_size=1, max_size=3).map(",".join)
MACRO = st.sampled_from([*MACROS, "@reboot", "@REBOOT", "@every", "@", "@daily5"])


def five_fields(field: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(field, field, field, field, field).map(" ".join)


ENTRY = st.one_of(
    st.text(FILE_CHAR),
    spliced([*FIELD_TOKENS, " ", " ", "\t", "@daily", "@reboot", "true", "./job"], 30),
    st.tuples(five_fields(spliced(FIELD_TOKENS, 4)), st.sampled_from(["", " true", " 5 x"]))
    .map("".join),
    st.tuples(five_fields(VALID_FIELD), st.sampled_from([" true", " ./job --x", ""]))
    .map("".join),
    st.tuples(MACRO, st.sampled_from(["", " ", " true"])).map("".join),
)


def check_entry(entry: CronEntry, kind: str, text: str) -> None:
    assert entry.kind == kind and entry.command and entry.command in text
    if entry.reboot:
        return
    after = datetime(2026, 1, 1, tzinfo=UTC)
    for tz in ZONES:
        when = next_run(entry, after, tz)
        if when is None:
            with pytest.raises(CronError, match=f"^{kind}: .* never runs in {tz.key}"):
                check_fires(entry, tz)
        else:
            assert when > after and when.tzinfo is tz and when - after < timedelta(days=41 * 366)


@given(text=ENTRY)
@example(text=f"{HUGE} * * * * true")
@example(text=f"*/{HUGE} * * * * true")
@example(text="* 2 25-31 3 */7 true")   # only in Berlin's spring gap: next_run went to year 10000
@settings(max_examples=examples(250))
def test_cron_line_parses_or_names_what_it_refused(text: str) -> None:
    try:
        entry = parse_cron("cron1", text, "apps/a/Procfile", 7)
    except CronError as error:
        assert (error.key, error.file, error.line) == ("cron1", "apps/a/Procfile", 7)
        message = str(error)
        assert message.startswith("apps/a/Procfile, line 7: cron1: ")
        words = text.split()
        quoted = [text.strip(), *words, " ".join(words[:5]), *(w.lower() for w in words[:1])]
        assert any(repr(part) in message for part in quoted) or "empty entry" in message, message
    else:
        check_entry(entry, "cron1", text)


def test_an_entry_only_in_a_dst_gap_is_refused_at_once() -> None:
    entry = parse_cron("cron1", "* 2 25-31 3 */7 true")
    with pytest.raises(CronError, match="cron1: '\\* 2 25-31 3 \\*/7' never runs in "
                                        "Europe/Berlin"):
        check_fires(entry, ZoneInfo("Europe/Berlin"))
    check_fires(entry, ZoneInfo("UTC"))
    autumn = parse_cron("cron1", "* 2 25-31 10 */7 true")     # only in the repeated hour
    assert next_run(autumn, datetime(2026, 1, 1, tzinfo=UTC),
                    ZoneInfo("Europe/Berlin")) == datetime(2026, 10, 25, 2, 0,
                                                           tzinfo=ZoneInfo("Europe/Berlin"))
