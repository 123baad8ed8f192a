"""The keeper's record against real processes: only a recorded pid that is alive and
is the same process (its start time in /proc/PID/stat) with its log pipe handed back
can be adopted."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import pytest

from pikud.limits import Limits
from pikud.procman.keeper import Keeper, Kept, start_time
from pikud.procman.process import ProcessSpec
from pikud.sdnotify import Notifier


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def kept(name: str, pid: int, start: int) -> Kept:
    return Kept(name, pid, start, "1.1", f"log.{name.replace(':', '.')}.{pid}", None,
                "digest", 0)


def test_only_the_same_live_process_with_its_pipe_back_can_be_adopted(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    start = start_time(sleeper.pid)
    assert start is not None and start_time(2**22 + 1) is None
    same, reused = kept("a:web.1", sleeper.pid, start), kept("a:web.2", sleeper.pid, start + 1)
    gone = kept("a:web.3", 2**22 + 1, start)
    piped = kept("a:web.4", sleeper.pid, start)
    unpiped = Kept(**dict(asdict(piped), log="log.never.stored"))
    record = tmp_path / "run" / "processes.json"
    record.parent.mkdir()
    record.write_text(json.dumps({"processes": [asdict(k) for k in
                                                (same, reused, gone, piped, unpiped)]}))
    fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(4)]
    try:
        keeper = Keeper(Notifier({}), record)
        passed = [(k.log, fd) for k, fd in zip((same, reused, gone, piped), fds, strict=True)]
        assert keeper.restore(passed) == 2           # same and piped: web.1, web.4
        assert keeper.adopting == {"1.1"}
        assert not keeper.enabled                    # no NOTIFY_SOCKET: nothing recorded
    finally:
        for fd in fds:
            os.close(fd)


def test_a_spec_under_other_limits_is_another_process_to_adopt(tmp_path: Path) -> None:
    spec = ProcessSpec(name="a:web.1", kind="web", index=1, command="serve", env=(),
                       cwd=tmp_path, log_path=tmp_path / "web.1.log")
    assert spec.digest == replace(spec, stop_timeout=3.0).digest
    assert spec.digest != replace(spec, limits=Limits(memory=256 * 1024 * 1024)).digest
