"""Process output: capture, timestamp, rotate by size, tail and follow.

Each process slot writes ``logs/APP/KIND.N.log``; every line is prefixed with
a local ISO-8601 timestamp. When the file passes ``max_bytes`` it becomes
``.log.1`` (older backups shift up to ``backups``). Followers subscribe to the
writer in the daemon, so following survives a rotation without reading files.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pikud.procman.readers import readers
from pikud.regularfiles import open_regular

log = logging.getLogger(__name__)
MAX_LINE = 64 * 1024            # a longer line is cut into pieces of this size
RETRY_WRITE = 1.0               # seconds a failing log (a full disk) drops lines before a retry

Follower = Callable[[str, str], None]


def open_log(path: Path, flags: int, mode: int = 0o666) -> int:
    """A descriptor on the log file ``path`` (``flags``: os.O_RDONLY, or appending), which
    must be a regular file with one link (regularfiles.py). Log folders are the deploy
    user's, and pikud may read and write them as root."""
    fd, info = open_regular(path, flags, mode)
    if info.st_nlink != 1:
        os.close(fd)
        raise OSError(errno.EINVAL, f"not a regular file with one link (mode "
                                    f"{stat.filemode(info.st_mode)}, {info.st_nlink} links)")
    return fd


APPENDING = os.O_WRONLY | os.O_APPEND | os.O_CREAT


def timestamp() -> str:
    """Now in local time, ISO 8601 to the millisecond with the UTC offset
    (2026-12-06T13:05:09.042+01:00). Made with time, not datetime: datetime's module
    would stay in the daemon's memory (about 450 KiB of RSS) for this one line."""
    now = time.time()
    local = time.localtime(now)
    sign = "-" if local.tm_gmtoff < 0 else "+"
    minutes, seconds = divmod(abs(local.tm_gmtoff), 60)
    hours, minutes = divmod(minutes, 60)
    offset = f"{sign}{hours:02d}:{minutes:02d}" + (f":{seconds:02d}" if seconds else "")
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', local)}.{int(now % 1 * 1000):03d}{offset}"


class LogFile:
    """One rotating, timestamped log file with live followers."""

    __slots__ = ("path", "source", "max_bytes", "backups", "followers", "_file", "_size",
                 "_failed_at", "_dropped")      # one per process slot

    def __init__(self, path: Path, source: str, max_bytes: int, backups: int,
                 followers: set[Follower]) -> None:
        self.path, self.source = path, source
        self.max_bytes, self.backups = max_bytes, backups
        self.followers = followers              # shared by every log of one app
        self._file: BinaryIO | None = None
        self._size = 0
        self._failed_at: float | None = None    # when the last write failed
        self._dropped = 0                       # lines lost since then

    def _open(self) -> BinaryIO:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # Kept open across writes (rotation and close() close it), so no `with`.
            self._file = os.fdopen(open_log(self.path, APPENDING), "ab", buffering=0)
            self._size = self._file.tell()
        return self._file

    def write_line(self, text: str) -> None:
        """Append one timestamped line; a full or broken disk loses the line, not the process.

        After a failed write, lines are dropped without a try for RETRY_WRITE
        seconds, so a flooding app on a full disk costs no syscall per line.
        """
        line = f"{timestamp()} {text}"
        for follower in tuple(self.followers):
            follower(self.source, line)
        if self._failed_at is not None and time.monotonic() - self._failed_at < RETRY_WRITE:
            self._dropped += 1
            return
        data = (line + "\n").encode(errors="replace")
        try:
            if self._size and self._size + len(data) > self.max_bytes:
                self.rotate()
            self._open().write(data)
            self._size += len(data)
        except OSError as exc:
            if self._failed_at is None:     # once until it works again, not once per line
                log.error("log lines dropped: cannot write %s: %s; dropping its lines until "
                          "a write succeeds", self.path, exc)
            self._failed_at, self._dropped = time.monotonic(), self._dropped + 1
            self.close()
            return
        if self._failed_at is not None:
            log.warning("log written again: %s after %d lines were dropped", self.path,
                        self._dropped)
            self._failed_at, self._dropped = None, 0

    def rotate(self) -> None:
        self.close()
        rotate(self.path, self.backups)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._size = 0


def rotate(path: Path, backups: int) -> None:
    """``path`` becomes ``.1``, older backups shift up, the one past ``backups`` is dropped."""
    for n in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{n}")
        if older.exists():
            os.replace(older, path.with_name(f"{path.name}.{n + 1}"))
    if path.exists():
        os.replace(path, path.with_name(f"{path.name}.1"))


LineSink = Callable[[str], None]


class PipeReader:
    """Reads a child's output pipe on the loop and hands whole lines to ``sink``."""

    __slots__ = ("fd", "sink", "_buffer", "_loop", "_open", "_closed")   # one per process

    def __init__(self, fd: int, sink: LineSink) -> None:
        self.fd, self.sink = fd, sink
        self._buffer = b""
        os.set_blocking(fd, False)
        self._loop = asyncio.get_running_loop()
        self._open = True
        self._closed: asyncio.Future[None] | None = None
        readers().add(fd, self._readable)

    @property
    def closed(self) -> asyncio.Future[None]:
        """Done once the pipe is closed. Made when first asked for: most readers never
        are, and a future is the largest part of one."""
        if self._closed is None:
            self._closed = self._loop.create_future()
            if not self._open:
                self._closed.set_result(None)
        return self._closed

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._finish()
            return
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._emit(line)
        while len(self._buffer) >= MAX_LINE:
            self._emit(self._buffer[:MAX_LINE])
            self._buffer = self._buffer[MAX_LINE:]

    def _emit(self, raw: bytes) -> None:
        self.sink(raw.rstrip(b"\r").decode(errors="replace"))

    def _finish(self) -> None:
        readers().remove(self.fd)
        os.close(self.fd)
        if self._buffer:
            self._emit(self._buffer)
            self._buffer = b""
        self._open = False
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)


def tail(path: Path, lines: int) -> list[str]:
    """The last ``lines`` lines of a log, reaching into ``.1`` when the file is short."""
    found: list[str] = []
    for candidate in (path, path.with_name(path.name + ".1")):
        if len(found) >= lines:
            break
        found = _tail_one(candidate, lines - len(found)) + found
    return found


def _tail_one(path: Path, lines: int) -> list[str]:
    if lines <= 0:
        return []
    try:
        with os.fdopen(open_log(path, os.O_RDONLY), "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            block, data = 8192, b""
            while end > 0 and data.count(b"\n") <= lines:
                start = max(0, end - block)
                f.seek(start)
                data = f.read(end - start) + data
                end = start
    except FileNotFoundError:
        return []
    except OSError as exc:      # a link or FIFO put in place of a log: said, and left out
        log.warning("log left out: cannot read %s: %s", path, exc)
        return []
    return [line.decode(errors="replace") for line in data.splitlines()[-lines:]]


def log_files(directory: Path, kind: str | None = None) -> Iterator[tuple[str, Path]]:
    """(source, path) of each current log in an app's log folder, e.g. ('web.1', .../web.1.log)."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.log")):
        source = path.name[: -len(".log")]
        if kind is None or source == kind or source.startswith(kind + "."):
            yield source, path
