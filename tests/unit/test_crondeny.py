"""App users refused cron and at (crondeny.py), on deny files in a temp folder."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pikud import crondeny
from pikud.crondeny import DenyFile, with_name, without_name


@pytest.fixture
def etc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(crondeny, "DENY_FILES", (
        DenyFile(tmp_path / "cron.deny", tmp_path / "cron.allow", True),
        DenyFile(tmp_path / "at.deny", tmp_path / "at.allow", False)))
    return tmp_path


def test_a_name_is_added_once_and_taken_out_alone() -> None:
    assert with_name("", "piku-a") == "piku-a\n"
    assert with_name("daemon\nbin", "piku-a") == "daemon\nbin\npiku-a\n"
    assert with_name("daemon\npiku-a\n", "piku-a") is None
    assert without_name("daemon\npiku-a\npiku-ab\n", "piku-a") == "daemon\npiku-ab\n"
    assert without_name("daemon\n", "piku-a") is None


def test_cron_deny_is_made_but_a_missing_at_deny_is_left(etc: Path) -> None:
    """No at.deny: at already refuses all but root, and making one would let the rest in."""
    assert crondeny.deny("piku-a") == [etc / "cron.deny"]
    assert (etc / "cron.deny").read_text() == "piku-a\n"
    assert stat.S_IMODE((etc / "cron.deny").stat().st_mode) == 0o644
    assert not (etc / "at.deny").exists()
    assert crondeny.deny("piku-a") == []
    assert crondeny.undeny("piku-a") == [etc / "cron.deny"]
    assert (etc / "cron.deny").read_text() == ""


def test_an_existing_deny_file_keeps_its_mode_and_lines(etc: Path) -> None:
    (etc / "at.deny").write_text("daemon\nnobody\n")
    os.chmod(etc / "at.deny", 0o640)
    assert crondeny.deny("piku-a") == [etc / "cron.deny", etc / "at.deny"]
    assert (etc / "at.deny").read_text() == "daemon\nnobody\npiku-a\n"
    assert stat.S_IMODE((etc / "at.deny").stat().st_mode) == 0o640
    crondeny.undeny("piku-a")
    assert (etc / "at.deny").read_text() == "daemon\nnobody\n"


def test_an_allow_file_refuses_the_user_already(etc: Path) -> None:
    (etc / "cron.allow").write_text("root\n")
    (etc / "at.allow").write_text("root\n")
    (etc / "at.deny").write_text("")
    assert crondeny.deny("piku-a") == []
    assert not (etc / "cron.deny").exists() and (etc / "at.deny").read_text() == ""
