"""The systemd notify protocol: one datagram per message to $NOTIFY_SOCKET, and the
file descriptor store (descriptors sent with FDSTORE=1, handed back at the next start).

Errors are logged, not swallowed; without NOTIFY_SOCKET every call is a no-op.
"""

# Design notes (sd_notify(3), sd_listen_fds(3), systemd.service(5)):
# - FDSTORE=1 with FDNAME=... stores the descriptors sent on the same datagram
#   (SCM_RIGHTS); systemd keeps them only when the unit sets
#   FileDescriptorStoreMax= and drops the whole store when the unit is stopped
#   (not when it is restarted after a crash). FDSTOREREMOVE=1 with FDNAME=
#   drops every descriptor of that name. A name is at most 255 printable ASCII
#   characters without ':'; systemd ignores a message with another.
# - FDPOLL=0: systemd would otherwise drop a stored pipe at its EPOLLHUP, when
#   its writer exits, and with it the last lines the writer left in the pipe.
# - At the next start the descriptors are at fd 3 onwards: LISTEN_FDS says how
#   many, LISTEN_FDNAMES their names (colon-separated), and LISTEN_PID whose they
#   are (a child that inherited the variables must not take them). All three
#   are removed from the environment once read, so no child sees them.

from __future__ import annotations

import logging
import os
import socket
from collections.abc import MutableMapping

log = logging.getLogger(__name__)

LISTEN_START = 3                # SD_LISTEN_FDS_START
MAX_FD_NAME = 255


def valid_fd_name(name: str) -> bool:
    """What systemd accepts as an FDNAME: 1-255 printable ASCII characters, no ':'."""
    return 0 < len(name) <= MAX_FD_NAME and name.isascii() and name.isprintable() and (
        ":" not in name)


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        ours = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 2e6 if usec.isdigit() and ours else None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str, fds: tuple[int, ...] = ()) -> bool:
        """Send one message (with ``fds`` attached); False when it could not be sent."""
        if self.address is None:
            return False
        address = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(address)
                data = "\n".join(fields).encode()
                if fds:
                    socket.send_fds(sock, [data], list(fds))
                else:
                    sock.sendall(data)
            return True
        except OSError as exc:
            log.warning("could not notify systemd at %s: %s", self.address, exc)
            return False

    def ready(self, status: str) -> None:
        self.send("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping apps")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")

    def store(self, name: str, fd: int) -> bool:
        """Keep a copy of ``fd`` in systemd's descriptor store under ``name`` (unpolled)."""
        if not valid_fd_name(name):
            raise ValueError(f"not a valid FDNAME for systemd: {name!r}")
        return self.send("FDSTORE=1", f"FDNAME={name}", "FDPOLL=0", fds=(fd,))

    def unstore(self, name: str) -> bool:
        """Drop (and have systemd close) every stored descriptor called ``name``."""
        return self.send("FDSTOREREMOVE=1", f"FDNAME={name}")


def listen_fds(environ: MutableMapping[str, str] | None = None) -> list[tuple[str, int]]:
    """The descriptors systemd passed to this process, as (name, fd) from fd 3 on.

    Empty unless LISTEN_PID is this process. LISTEN_PID, LISTEN_FDS and
    LISTEN_FDNAMES are removed from ``environ`` (os.environ by default) either
    way, and the descriptors are made close-on-exec: they are the daemon's.
    A descriptor without a name is called ``unknown`` (systemd: ``stored``).
    """
    env = os.environ if environ is None else environ
    pid = env.pop("LISTEN_PID", "")
    count = env.pop("LISTEN_FDS", "")
    names = env.pop("LISTEN_FDNAMES", "")
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    listed = names.split(":") if names else []
    passed = []
    for index in range(int(count)):
        fd = LISTEN_START + index
        try:
            os.set_inheritable(fd, False)
        except OSError as exc:
            log.warning("descriptor store: fd %d that LISTEN_FDS names is not open: %s", fd, exc)
            continue
        passed.append((listed[index] if index < len(listed) else "unknown", fd))
    return passed
