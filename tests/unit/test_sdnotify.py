"""The notify protocol's descriptor store, against a real datagram socket: what is sent
with FDSTORE=1 arrives as a descriptor of the same object; what systemd hands back is read
from LISTEN_* once, for this pid only."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from pikud.sdnotify import Notifier, valid_fd_name


@pytest.mark.parametrize(("name", "valid"), [
    ("log.app.web.1.4242", True), ("listen.my-app.worker_2.3.8000", True), ("control", True),
    ("x" * 255, True), ("x" * 256, False), ("", False), ("log.app:web.1", False),
    ("tab\there", False), ("caf\u00e9", False),
])
def test_fd_names_follow_systemds_rules(name: str, valid: bool) -> None:
    assert valid_fd_name(name) is valid


def test_store_sends_the_descriptor_and_unstore_names_it(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        read_end, write_end = os.pipe()
        try:
            assert notifier.store("log.app.web.1.42", read_end)
            data, fds, _, _ = socket.recv_fds(systemd, 4096, 4)
            assert data.decode().split("\n") == ["FDSTORE=1", "FDNAME=log.app.web.1.42",
                                                  "FDPOLL=0"]
            assert len(fds) == 1 and os.fstat(fds[0]).st_ino == os.fstat(read_end).st_ino
            os.close(fds[0])
            assert notifier.unstore("log.app.web.1.42")
            assert systemd.recv(4096) == b"FDSTOREREMOVE=1\nFDNAME=log.app.web.1.42"
            with pytest.raises(ValueError, match="FDNAME"):
                notifier.store("no:colons", read_end)
        finally:
            os.close(read_end)
            os.close(write_end)


def test_without_notify_socket_nothing_is_sent() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and not notifier.store("control", 0)


# Run in a child of its own: fd 3 there is free to take (here it is pytest's).
LISTEN = """\
import os, sys
from pikud.sdnotify import listen_fds
os.dup2(int(sys.argv[1]), 3)
env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "1", "LISTEN_FDNAMES": "router",
       "PATH": "/bin"}
other = {"LISTEN_PID": "1", "LISTEN_FDS": "1", "LISTEN_FDNAMES": "router"}
print(listen_fds(env), env, os.get_inheritable(3), listen_fds(other), other)
"""


def test_listen_fds_are_read_for_this_pid_only_and_unset() -> None:
    r, w = os.pipe()
    try:
        out = subprocess.run([sys.executable, "-c", LISTEN, str(r)], pass_fds=(r,),
                             capture_output=True, text=True, check=True, timeout=30).stdout
    finally:
        os.close(r)
        os.close(w)
    assert out.split() == ["[('router',", "3)]", "{'PATH':", "'/bin'}", "False", "[]", "{}"]
