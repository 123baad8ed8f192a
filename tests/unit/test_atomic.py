"""Atomic writes: the new file whole, with its mode, or the old one untouched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pikud.atomic import write_atomic, written_unless_failed


def test_a_write_replaces_the_file_whole_with_its_mode_and_leaves_nothing_beside(
        tmp_path: Path) -> None:
    target = tmp_path / "state" / "apps.json"
    write_atomic(target, "first\n", mode=0o600)
    assert (target.parent.stat().st_mode & 0o777) == 0o700      # made for a private file
    write_atomic(target, "second\n", mode=0o640)
    assert target.read_text() == "second\n"
    assert (target.stat().st_mode & 0o777) == 0o640
    assert os.listdir(target.parent) == ["apps.json"]


def test_a_write_that_fails_keeps_the_old_file_and_no_temporary_one(tmp_path: Path) -> None:
    target = tmp_path / "ENV"
    write_atomic(target, "A=1\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomic(target, "B=\udcff\n")                     # not encodable as UTF-8
    assert target.read_text() == "A=1\n"
    assert os.listdir(tmp_path) == ["ENV"]


def test_a_link_in_place_of_the_file_is_replaced_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("keep\n")
    target = tmp_path / "SCALING"
    target.symlink_to(elsewhere)
    write_atomic(target, "web: 1\n")
    assert not target.is_symlink() and target.read_text() == "web: 1\n"
    assert elsewhere.read_text() == "keep\n"


def test_a_setting_that_fails_to_apply_is_put_back(tmp_path: Path) -> None:
    target = tmp_path / "LIVE"
    write_atomic(target, "old\n")
    with pytest.raises(RuntimeError), written_unless_failed(target, "new\n"):
        assert target.read_text() == "new\n"
        raise RuntimeError("did not apply")
    assert target.read_text() == "old\n"
    with pytest.raises(RuntimeError), written_unless_failed(tmp_path / "NEW", "x\n"):
        raise RuntimeError("did not apply")
    assert not (tmp_path / "NEW").exists()
