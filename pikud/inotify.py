"""The few inotify calls pikud's file watch makes, straight to libc through ctypes.

ctypes is already in the daemon (the subreaper's prctl). asyncinotify, which the watch
used before, finds libc through ctypes.util.find_library: that imports shutil (with bz2
and lzma) and runs ldconfig, about 800 KiB of the daemon's RSS for one library name.
"""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path
from typing import NamedTuple

# Event bits (linux/inotify.h).
ATTRIB = 0x004
CLOSE_WRITE = 0x008
MOVED_TO = 0x080
CREATE = 0x100
DELETE = 0x200
Q_OVERFLOW = 0x4000         # the kernel's queue was full: events were dropped

_HEADER = struct.Struct("iIII")     # wd, mask, cookie, length of the name that follows
_READ_SIZE = 64 * 1024              # room for at least 200 events of the longest name


class Event(NamedTuple):
    wd: int
    mask: int
    name: str           # the file's name in the watched folder; "" for the folder itself


class Inotify:
    """One non-blocking, close-on-exec inotify instance; the caller polls ``fd``."""

    def __init__(self) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        # IN_NONBLOCK and IN_CLOEXEC are O_NONBLOCK and O_CLOEXEC.
        self.fd = self._checked(self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))

    @staticmethod
    def _checked(result: int) -> int:
        if result == -1:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return result

    def add_watch(self, folder: Path, mask: int) -> int:
        """Watch ``folder`` for ``mask``; the watch descriptor its events carry."""
        return self._checked(self._libc.inotify_add_watch(self.fd, os.fsencode(folder),
                                                          ctypes.c_uint32(mask)))

    def rm_watch(self, wd: int) -> None:
        self._checked(self._libc.inotify_rm_watch(self.fd, wd))

    def read(self) -> list[Event]:
        """The events queued now (none if there are none yet)."""
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return []
        events, at = [], 0
        while at + _HEADER.size <= len(data):
            wd, mask, _cookie, length = _HEADER.unpack_from(data, at)
            at += _HEADER.size
            name = os.fsdecode(data[at:at + length].rstrip(b"\0"))
            at += length
            events.append(Event(wd, mask, name))
        return events

    def close(self) -> None:
        os.close(self.fd)
