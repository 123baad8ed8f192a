"""Listening sockets owned by the daemon and handed to a process the systemd way.

A slot whose server can take an inherited socket (gunicorn, uvicorn, or a
``web`` app that asks with PIKU_LISTEN_FDS) gets a socket the daemon binds
and keeps for the slot's whole life: while its process boots or restarts
after a crash, connections wait in the socket's backlog instead of being
refused. The process finds it as fd 3 with LISTEN_FDS=1 and LISTEN_PID set
to its own pid (FACTS.md: gunicorn keeps such a socket on SIGTERM).

A web slot's address is a loopback port (``int``) or the path of a unix
socket under ``$PIKU_ROOT/nginx/sockets`` (``str``): wsgi and asgi slots
serve on unix sockets unless the app sets PIKU_UPSTREAM=tcp, so that only
nginx's workers and the router reach them, not every local user.
"""

# Design notes:
# - A socket's file name is ``APP.KIND.N.TOKEN.sock``: TOKEN (random) is new
#   for every slot a change starts, so an old and a new generation side by
#   side never share a path. sun_path holds 107 bytes and a NUL; when the long
#   name does not fit, ``TOKEN.sock`` does (what a path is for is in ps and
#   the keeper's record). A PIKU_ROOT too long for even that is an EnvError.
# - Sockets are made 0660 (owner and group): the folder is the boundary, and
#   `piku setup --fix` gives it nginx's group with setgid (nginxaccess.py),
#   so every socket made in it belongs to that group.

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import stat
from pathlib import Path

from pikud.errors import EnvError

FIRST_FD = 3                    # SD_LISTEN_FDS_START
SUN_PATH_MAX = 107              # bytes of a unix socket's path (sockaddr_un's 108, less a NUL)
SOCKET_MODE = 0o660
FOLDER_MODE = 0o700             # when the daemon makes it; `piku setup --fix` makes it 2750

Address = int | str             # a loopback port, or a unix socket's path


def socket_path(folder: Path, slot: str, token: str | None = None) -> str:
    """A new path for slot ``APP:KIND.N``'s unix socket in ``folder``; EnvError naming
    PIKU_ROOT when even the short name does not fit in a socket address."""
    token = token or os.urandom(4).hex()    # as secrets.token_hex(4), without its hashlib
    for name in (f"{slot.replace(':', '.')}.{token}.sock", f"{token}.sock"):
        path = os.path.join(folder, name)
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            return path
    raise EnvError(f"PIKU_ROOT: {folder} is too long for unix sockets: {path} is "
                   f"{len(os.fsencode(path))} bytes, a socket's path holds at most "
                   f"{SUN_PATH_MAX}; choose a shorter PIKU_ROOT, or PIKU_UPSTREAM=tcp",
                   key="PIKU_ROOT")


def label(address: Address | tuple[str, int]) -> str:
    """A short printable name for a listener: its port, or its socket file's stem
    (``address`` as ``getsockname()`` gives it, or a slot's address)."""
    if isinstance(address, tuple):
        return str(address[1])
    if isinstance(address, str):
        return Path(address).name.removesuffix(".sock")
    return str(address)


def remove_socket(path: str) -> None:
    """Remove a unix socket's file (a stale one, or one whose slot is gone), if there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _off_fd3(sock: socket.socket) -> socket.socket:
    """``sock``, kept off fd 3 so that the hand-over can dup it there."""
    if sock.fileno() > FIRST_FD:
        return sock
    high = socket.socket(fileno=fcntl.fcntl(sock.fileno(), fcntl.F_DUPFD_CLOEXEC, 10))
    sock.close()
    return high


def listen_tcp(port: int, backlog: int) -> socket.socket:
    """A listening socket on 127.0.0.1:``port``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return _off_fd3(sock)


def listen_unix(path: str, backlog: int) -> socket.socket:
    """A listening unix socket at ``path``, mode 0660; a stale file there is replaced
    (each slot's path is its own). The mode is set on the file itself, never through a
    link: with app users the folder is the app's, which could swap the path for one."""
    remove_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        chmod_socket(path, SOCKET_MODE)
        sock.listen(backlog)
    except OSError:
        sock.close()
        remove_socket(path)
        raise
    return _off_fd3(sock)


def chmod_socket(path: str, mode: int) -> None:
    """chmod the socket file at ``path`` itself (O_PATH, no link followed; the umask is
    the whole process's, so it is not changed while threads may create files)."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(f"{path} is no longer the socket just bound")
        os.chmod(f"/proc/self/fd/{fd}", mode)     # how glibc's lchmod does it
    finally:
        os.close(fd)


def listen(address: Address, backlog: int) -> socket.socket:
    """A listening socket at a slot's address: a loopback port or a unix socket."""
    if isinstance(address, str):
        return listen_unix(address, backlog)
    return listen_tcp(address, backlog)


def hand_over(command: str, fd: int) -> list[str]:
    """argv that moves ``fd`` to fd 3 and sets LISTEN_FDS/LISTEN_PID, then runs ``command``.

    LISTEN_PID must be the pid of the program that reads it: ``$$`` is the
    shell's, which ``exec`` keeps, so ``command`` must exec its server. bash,
    because dash cannot name a descriptor above 9 in a redirection.
    """
    return ["/bin/bash", "-c", f"exec {FIRST_FD}<&{fd} {fd}<&-; LISTEN_FDS=1 LISTEN_PID=$$; "
            f"export LISTEN_FDS LISTEN_PID; {command}"]
