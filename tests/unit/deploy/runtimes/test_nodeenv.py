from __future__ import annotations

from pathlib import Path

import pytest

from pikud.deploy.runtimes.nodeenv import error_lines, nodeenv_argv


@pytest.mark.parametrize(("mirror", "extra"), [
    ("", []), ("  ", []),
    ("http://127.0.0.1:8000/dist/", ["--mirror=http://127.0.0.1:8000/dist"]),
    ("mirror.example", ["--mirror=mirror.example"]),
])
def test_nodeenv_argv(mirror: str, extra: list[str]) -> None:
    assert nodeenv_argv("/bin/nodeenv", "20.11.1", Path("/envs/app/n"), mirror) == [
        "/bin/nodeenv", "--prebuilt", "--node=20.11.1", *extra, "/envs/app/n"]


@pytest.mark.parametrize(("output", "quoted"), [
    ([" * Install prebuilt node (20.1.0) .Error: cannot download http://h/x: refused", ""],
     "Error: cannot download http://h/x: refused"),
    (["Error: a", "Error: b", "Error: c", "Error: d"], "Error: b; Error: c; Error: d"),
    (["Traceback (most recent call last):", "  ...", "OSError: disk full", ""],
     "OSError: disk full"),
    ([], "no output"),
])
def test_error_lines(output: list[str], quoted: str) -> None:
    assert error_lines(output) == quoted
