"""A stand-in for systemd's side of the notify protocol and its descriptor store.

These machines have no systemd as PID 1, so this plays it for one service:
a datagram socket at NOTIFY_SOCKET whose messages are read in a thread;
descriptors sent with FDSTORE=1 are kept by FDNAME (a duplicate of one
already kept is closed, as systemd does), FDSTOREREMOVE=1 closes and forgets
every descriptor of a name, and ``launch`` starts the service's next run with
the kept descriptors at fd 3 onwards, LISTEN_FDS, LISTEN_FDNAMES and, set
after the fork by a tiny trampoline that then execs the service,
LISTEN_PID (sd_listen_fds(3)).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from pathlib import Path

# Runs as the service's pid: moves the descriptors to 3.. and execs the service.
TRAMPOLINE = """\
import fcntl, os, sys
cut = sys.argv.index("--")
fds, argv = [int(a) for a in sys.argv[1:cut]], sys.argv[cut + 1:]
floor = max(fds + [2]) + len(fds) + 1
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, floor) for fd in fds]
for fd in fds:
    os.close(fd)
for index, fd in enumerate(high):
    os.dup2(fd, 3 + index)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(argv[0], argv)
"""


class SystemdStandIn:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.stored: list[tuple[str, int]] = []
        self.messages: list[str] = []
        self.lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while True:
            readable, _, _ = select.select([self.sock, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 16)
            self._handle(data.decode(), fds)

    def _handle(self, message: str, fds: list[int]) -> None:
        fields = dict(line.split("=", 1) for line in message.splitlines() if "=" in line)
        name = fields.get("FDNAME", "stored")
        with self.lock:
            self.messages.append(message)
            if fields.get("FDSTOREREMOVE") == "1":
                for gone in [fd for kept, fd in self.stored if kept == name]:
                    os.close(gone)
                self.stored = [(kept, fd) for kept, fd in self.stored if kept != name]
            for fd in fds:
                if fields.get("FDSTORE") == "1" and not self._holds(fd):
                    self.stored.append((name, fd))
                else:
                    os.close(fd)

    def _holds(self, fd: int) -> bool:
        """Whether a kept descriptor points to the same object as ``fd``."""
        new = os.fstat(fd)
        return any((old := os.fstat(kept)).st_ino == new.st_ino and old.st_dev == new.st_dev
                   for _, kept in self.stored)

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.stored]

    def launch(self, argv: list[str]) -> tuple[list[str], dict[str, str], tuple[int, ...]]:
        """argv, extra environment and descriptors to pass for the service's next run."""
        with self.lock:
            fds = tuple(fd for _, fd in self.stored)
            env = {"NOTIFY_SOCKET": str(self.path), "LISTEN_FDS": str(len(fds)),
                   "LISTEN_FDNAMES": ":".join(name for name, _ in self.stored)}
        return [sys.executable, "-c", TRAMPOLINE, *map(str, fds), "--", *argv], env, fds

    def flush(self) -> None:
        """Close every kept descriptor, as systemd does when the unit is stopped."""
        with self.lock:
            for _, fd in self.stored:
                os.close(fd)
            self.stored = []

    def close(self) -> None:
        os.write(self._wake_w, b"x")
        self._thread.join(5)
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        self.sock.close()
        self.flush()
