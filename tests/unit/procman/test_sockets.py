"""Unix socket paths for web slots: short, bounded, one per slot and generation."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from pikud.errors import EnvError
from pikud.procman.sockets import SUN_PATH_MAX, label, listen_unix, socket_path


def test_a_path_names_the_slot_and_a_token() -> None:
    assert socket_path(Path("/home/piku/.piku/nginx/sockets"), "app:wsgi.2", "0a1b2c3d") == \
        "/home/piku/.piku/nginx/sockets/app.wsgi.2.0a1b2c3d.sock"


def test_each_new_path_is_another() -> None:
    folder = Path("/srv/s")
    assert len({socket_path(folder, "app:wsgi.1") for _ in range(50)}) == 50


def test_a_long_app_name_falls_back_to_the_token_alone() -> None:
    folder = Path("/home/piku/.piku/nginx/sockets")
    name = "a" * 80
    path = socket_path(folder, f"{name}:wsgi.1", "0a1b2c3d")
    assert path == f"{folder}/0a1b2c3d.sock"
    # the longest name that still fits keeps it; one byte more falls back
    room = SUN_PATH_MAX - len(f"{folder}/.wsgi.1.0a1b2c3d.sock")
    assert socket_path(folder, f"{'b' * room}:wsgi.1", "0a1b2c3d").endswith(
        f"{'b' * room}.wsgi.1.0a1b2c3d.sock")
    assert socket_path(folder, f"{'b' * (room + 1)}:wsgi.1", "0a1b2c3d") == \
        f"{folder}/0a1b2c3d.sock"


def test_a_root_too_long_for_any_name_is_an_error_naming_it() -> None:
    folder = Path("/" + "r" * 100) / "nginx" / "sockets"
    with pytest.raises(EnvError) as info:
        socket_path(folder, "app:wsgi.1", "0a1b2c3d")
    assert info.value.key == "PIKU_ROOT"
    assert str(info.value).startswith(f"PIKU_ROOT: {folder} is too long for unix sockets")
    assert f"at most {SUN_PATH_MAX}" in str(info.value)


def test_labels_name_a_listener_in_the_descriptor_store() -> None:
    assert label(("127.0.0.1", 8123)) == label(8123) == "8123"
    assert label("/srv/s/app.wsgi.1.0a1b2c3d.sock") == "app.wsgi.1.0a1b2c3d"


def test_a_unix_listener_is_0660_and_replaces_a_stale_file(short_root: Path) -> None:
    path = str(short_root / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()                                   # the file stays, nothing listens
    with listen_unix(path, 8) as sock:
        assert sock.fileno() > 3
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
