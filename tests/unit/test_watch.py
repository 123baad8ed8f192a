"""FileWatcher and its inotify binding: events for the watched files, and a watch that
cannot be made is said, never raised into an app's commit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from pikud import inotify
from pikud.inotify import Event, Inotify
from pikud.watch import MASK, FileWatcher

DEADLINE = 10.0

# Run in a child: the descriptor limit is lowered to what is open, so inotify_init1 fails
# with EMFILE, as on a server whose user has no inotify instance or descriptor left.
PROBE = """
import asyncio, logging, os, resource, sys
from pathlib import Path
from pikud.watch import FileWatcher

async def main() -> None:
    logging.basicConfig(stream=sys.stdout, format="%(levelname)s %(message)s")
    watcher = FileWatcher(lambda app, why: None)
    folder = Path(sys.argv[1])
    opened = len(os.listdir("/proc/self/fd")) - 1     # less the one that lists them
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (opened, hard))
    watcher.watch("hello", folder, [])
    watcher.watch("hello", folder, [])
    print("returned")

asyncio.run(main())
"""


def test_a_watch_that_cannot_be_made_is_logged_and_the_watch_call_returns(tmp_path: Path) -> None:
    (tmp_path / "ENV").write_text("")
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1] == "returned"
    warnings = [line for line in lines if line.startswith("WARNING hello: cannot watch")]
    assert len(warnings) == 4, lines        # ENV and SCALING, twice
    assert "no inotify instance or descriptor left: raise fs.inotify.max_user_instances" \
        in warnings[0]


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], DEADLINE)[0])


def test_inotify_reports_each_change_by_watch_and_name(tmp_path: Path) -> None:
    events = Inotify()
    try:
        wd = events.add_watch(tmp_path, MASK)
        assert events.read() == []                      # nothing yet, and no blocking
        (tmp_path / "ENV").write_text("A=1\n")
        (tmp_path / "new").write_text("")
        os.rename(tmp_path / "new", tmp_path / "SCALING")
        (tmp_path / "ENV").unlink()
        seen: list[Event] = []
        while not any(e.mask & inotify.DELETE for e in seen) and readable(events.fd):
            seen += events.read()
        assert {(e.wd, e.name) for e in seen} == {(wd, "ENV"), (wd, "new"), (wd, "SCALING")}
        assert [e.mask for e in seen if e.name == "SCALING"] == [inotify.MOVED_TO]
        assert any(e.mask & inotify.CLOSE_WRITE for e in seen if e.name == "ENV")
        events.rm_watch(wd)
        (tmp_path / "ENV").write_text("")
        assert not any(e.name == "ENV" for e in events.read())
        with pytest.raises(OSError) as raised:
            events.add_watch(tmp_path / "missing", MASK)
        assert raised.value.errno == errno.ENOENT
    finally:
        events.close()


def test_an_edit_to_a_watched_file_is_reported_once_after_the_quiet_time(tmp_path: Path) -> None:
    async def main() -> list[tuple[str, str]]:
        reported: list[tuple[str, str]] = []
        done = asyncio.Event()

        def react(app: str, why: str) -> None:
            reported.append((app, why))
            done.set()
        watcher = FileWatcher(react)
        watcher.watch("hello", tmp_path, [tmp_path / "restart.txt"])
        try:
            (tmp_path / "unwatched").write_text("x")
            for text in ("A=1\n", "A=2\n", "A=3\n"):         # an editor's save: many events
                (tmp_path / "ENV").write_text(text)
            async with asyncio.timeout(DEADLINE):
                await done.wait()
            done.clear()
            (tmp_path / "restart.txt").touch()
            async with asyncio.timeout(DEADLINE):
                await done.wait()
        finally:
            watcher.close()
        return reported

    assert asyncio.run(main()) == [("hello", "config"), ("hello", "touch")]


def inotify_descriptors() -> int:
    """How many inotify descriptors this process has open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):      # the listing's own descriptor is gone
            count += os.readlink(f"/proc/self/fd/{fd}") == "anon_inode:inotify"
    return count


@pytest.mark.parametrize("background", [False, True])   # aclose: as a shutdown does
def test_a_watcher_closed_forgets_its_watches_and_can_watch_again(
        tmp_path: Path, background: bool) -> None:
    async def main() -> tuple[int, list[tuple[str, str]]]:
        reported: list[tuple[str, str]] = []
        done = asyncio.Event()
        watcher = FileWatcher(lambda app, why: (reported.append((app, why)), done.set()))
        watcher.watch("old", tmp_path, [])
        before = inotify_descriptors()
        if background:
            await watcher.aclose()      # the descriptor closed on a worker thread
        else:
            watcher.close()
        closed = before - inotify_descriptors()
        watcher.unwatch("old")                  # after a close: nothing left to remove
        watcher.watch("new", tmp_path, [])
        try:
            (tmp_path / "SCALING").write_text("web: 2\n")
            async with asyncio.timeout(DEADLINE):
                await done.wait()
        finally:
            watcher.close()
        return closed, reported

    assert asyncio.run(main()) == (1, [("new", "config")])
