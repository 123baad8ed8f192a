"""control/server.py: the control socket's file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pikud.control.server import bind_socket


def test_the_socket_is_made_0600_without_the_process_umask(
        short_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The umask is the whole process's (other threads create files meanwhile): the mode
    is set on the socket file itself, whatever the umask."""
    old = os.umask(0o000)
    try:
        def umask(mask: int) -> int:
            raise AssertionError(f"bind_socket changed the process's umask to {mask:o}")
        monkeypatch.setattr(os, "umask", umask)
        with bind_socket(short_root / "p.sock") as sock:
            assert stat.S_IMODE((short_root / "p.sock").stat().st_mode) == 0o600
            assert sock.getsockname() == str(short_root / "p.sock")
    finally:
        monkeypatch.undo()
        os.umask(old)
