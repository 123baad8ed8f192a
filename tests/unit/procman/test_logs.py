"""The timestamp every app log line starts with: ISO 8601, local, to the millisecond."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from pikud.procman.logs import timestamp


@pytest.fixture
def zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The test sets TZ; afterwards the process's zone is put back (tzset reads TZ)."""
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(("tz", "offsets"), [
    ("UTC", {"+00:00"}),
    ("Europe/Berlin", {"+01:00", "+02:00"}),
    ("Asia/Kolkata", {"+05:30"}),
    ("America/St_Johns", {"-03:30", "-02:30"}),
    ("XXX-05:30:15", {"+05:30:15"}),            # a POSIX TZ with seconds, as datetime has it
])
def test_a_timestamp_is_local_time_with_its_offset(
        tz: str, offsets: set[str], zone: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    before = datetime.now(UTC)
    stamp = timestamp()
    after = datetime.now(UTC)
    assert len(stamp) == len("2026-12-06T13:05:09.042") + len(next(iter(offsets)))
    assert stamp[23:] in offsets
    parsed = datetime.fromisoformat(stamp)
    assert before - timedelta(milliseconds=1) <= parsed <= after
    assert parsed.utcoffset() == datetime.now().astimezone().utcoffset()
