"""nginxaccess: the workers' user from nginx's config; what keeps them out and its fix."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from pikud.nginxaccess import (
    LIST,
    TRAVERSE,
    Blocked,
    Target,
    blocked,
    conf_path,
    distinct,
    fix_all,
    sockets_blocked,
    user_from_conf,
    worker_user,
)
from pikud.procman.sockets import FOLDER_MODE, listen_unix
from tests.net import connects_as


@pytest.mark.parametrize(("text", "user"), [
    ("user www-data;\nworker_processes auto;\n", "www-data"),
    ("  user   nginx nginx;\n", "nginx"),
    ("# user nobody;\nevents {}\n", None),
    ("worker_processes 2; # user nobody;\nuser http;\n", "http"),
    ("events {}\n", None),
])
def test_user_from_conf(text: str, user: str | None) -> None:
    assert user_from_conf(text) == user


def test_worker_user_reads_the_main_config(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text("user nginx;\n")
    assert worker_user(conf) == "nginx"
    assert worker_user(tmp_path / "missing.conf") == "www-data"
    version = "nginx version: nginx/1.22.1\nconfigure arguments: --conf-path=/opt/n/nginx.conf x"
    assert conf_path(version) == Path("/opt/n/nginx.conf")
    assert conf_path("nginx version: nginx/1.22.1") == Path("/etc/nginx/nginx.conf")


def test_one_fix_per_folder_and_it_lets_the_workers_in(open_dir: Path, www_data: str) -> None:
    home = open_dir / "home"
    static = home / "app" / "static"
    static.mkdir(parents=True)
    home.chmod(0o700)
    static.chmod(0o700)
    targets = [Target(static, LIST, "read"), Target(home / "acme", TRAVERSE, "serve from")]
    found = blocked(targets, www_data)
    assert [(item.path, item.command) for item in found] == [
        (home, f"chmod o+x {home}"), (home, f"chmod o+x {home}")]
    assert [item.command for item in distinct(found)] == [f"chmod o+x {home}"]
    assert fix_all(found) == [f"chmod o+x {home}"]
    assert stat.S_IMODE(home.stat().st_mode) == 0o701
    [left] = blocked(targets, www_data)             # the next thing on the way
    assert left.advice() == (f"nginx (user www-data) cannot read {static}: it is mode 0700; "
                             f"fix with `chmod o+rx {static}` (or give group www-data access)")
    assert fix_all([left]) == [f"chmod o+rx {static}"]
    assert blocked(targets, www_data) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to nginx's group needs root, as setup --fix")
def test_the_sockets_folder_is_given_to_nginxs_group_and_kept_from_others(
        open_dir: Path, www_data: str) -> None:
    sockets = open_dir / "sockets"
    sockets.mkdir(mode=FOLDER_MODE)                 # as the daemon makes it
    with listen_unix(str(sockets / "early.sock"), 8):
        [found] = sockets_blocked(sockets, www_data)
        assert found.command == f"chgrp -R www-data {sockets} && chmod u=rwx,g=rxs,o-rw {sockets}"
        assert connects_as(www_data, sockets / "early.sock") == "EACCES"
        assert fix_all([found]) == [found.command]
        assert stat.S_IMODE(sockets.stat().st_mode) == 0o2750
        assert sockets_blocked(sockets, www_data) == []
        with listen_unix(str(sockets / "later.sock"), 8):  # made after: the group's by setgid
            for name in ("early.sock", "later.sock"):
                assert connects_as(www_data, sockets / name) == "ok"
                assert connects_as("nobody", sockets / name) == "EACCES"


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to nginx's group needs root, as setup --fix")
def test_only_folders_decide_each_apps_alone(open_dir: Path, www_data: str) -> None:
    """One app's 0700 folder or socket (its user's, under app users; or granian's socket
    before its chmod) blocks neither the common folder nor another app."""
    sockets = open_dir / "sockets"
    mine, other = sockets / "piku-mine", sockets / "piku-other"
    for folder in (sockets, mine, other):
        folder.mkdir(mode=FOLDER_MODE)
    for item in found_fixed(sockets, www_data) + found_fixed(other, www_data):
        assert item.group == www_data
    with listen_unix(str(other / "web.sock"), 8):
        (sockets / "bare.sock").touch(mode=0o600)      # a socket's own mode is not asked
        assert sockets_blocked(sockets, www_data) == []
        assert sockets_blocked(other, www_data) == []
        [found] = sockets_blocked(mine, www_data)       # still 0700, not the group's
        assert found.path == mine
        assert connects_as(www_data, other / "web.sock") == "ok"


def found_fixed(folder: Path, user: str) -> list[Blocked]:
    found = sockets_blocked(folder, user)
    fix_all(found)
    assert sockets_blocked(folder, user) == []
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="chgrp to nginx's group needs root, as setup --fix")
@pytest.mark.parametrize("before", [0o700, 0o751])
def test_the_advice_does_what_the_fix_does_and_keeps_o_x(
        open_dir: Path, www_data: str, before: int) -> None:
    """Without app users the folder is 0700 as made; with them it has o+x, which stays."""
    by_hand, by_fix = open_dir / "hand", open_dir / "fix"
    for folder in (by_hand, by_fix):
        folder.mkdir()
        folder.chmod(before)
    [advice] = sockets_blocked(by_hand, www_data)
    subprocess.run(["sh", "-c", advice.command], check=True)
    fix_all(sockets_blocked(by_fix, www_data))
    modes = {stat.S_IMODE(folder.stat().st_mode) for folder in (by_hand, by_fix)}
    assert modes == {0o2750 | before & 0o001}
