"""pikud's `which` finds programs as shutil.which does, without importing shutil."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from pikud.programs import which


@pytest.fixture
def path_dirs(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
    (first / "tool").write_text("not executable\n")
    (first / "dir").mkdir(mode=0o755)
    for name in ("tool", "other"):
        (second / name).write_text("#!/bin/sh\n")
        (second / name).chmod(0o755)
    return first, second


def test_the_first_executable_file_on_the_path_wins(path_dirs: tuple[Path, Path]) -> None:
    first, second = path_dirs
    path = f"{first}{os.pathsep}{second}"
    for name in ("tool", "other", "dir", "missing"):
        assert which(name, path=path) == shutil.which(name, path=path)
    assert which("tool", path=path) == str(second / "tool")
    assert which("dir", path=path) is None


def test_the_default_is_path_and_a_name_with_a_slash_is_taken_as_it_is(
        path_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = path_dirs
    monkeypatch.setenv("PATH", str(second))
    assert which("other") == str(second / "other")
    assert which(str(second / "tool")) == str(second / "tool")
    assert which(str(first / "tool")) is None


def test_an_empty_path_finds_nothing_not_even_in_the_current_folder(
        path_dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """An app's ENV with PATH= (tools.which) or a daemon started with PATH="": shutil.which
    finds nothing there, and neither may an executable file of that name in the cwd."""
    _, second = path_dirs
    monkeypatch.chdir(second)
    assert which("tool", path="") is None and shutil.which("tool", path="") is None
    monkeypatch.setenv("PATH", "")
    assert which("tool") is None and shutil.which("tool") is None
    assert which("tool", path=os.pathsep) == shutil.which("tool", path=os.pathsep) == "tool"
