"""App users' names, and the refusal of a user pikud did not make (identity.py, appusers.py).

The refusal is checked against a real /etc/passwd entry (useradd as root, removed
at teardown); it skips when the tests do not run as root.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pikud import appusers, crondeny
from pikud.errors import AppUserError
from pikud.identity import Account, Identity, lookup, marker, user_name
from pikud.paths import LAYOUT, Paths

NAME = re.compile(r"[a-z0-9_-]{1,32}")      # what every useradd takes (Ubuntu 22.04's too)


@pytest.mark.parametrize(("app", "user"), [
    ("web", "piku-web"),
    ("my_app-2", "piku-my_app-2"),
    ("a" * 27, "piku-" + "a" * 27),          # 32 characters: the longest plain name
])
def test_a_plain_short_name_is_the_user_name(app: str, user: str) -> None:
    assert user_name(app) == user


@pytest.mark.parametrize("app", ["a" * 28, "A" * 64, "My.App", "web.example.com", "X-1",
                                 "z" + "9" * 63])
def test_other_names_are_truncated_with_a_hash(app: str) -> None:
    user = user_name(app)
    assert NAME.fullmatch(user) and user.startswith("piku-") and len(user) <= 32
    assert user == user_name(app)                       # the same every time
    assert re.fullmatch(r"piku-[a-z0-9_-]{1,18}-[0-9a-f]{8}", user)


def test_names_that_differ_in_case_or_past_the_cut_get_different_users() -> None:
    assert user_name("Web") != user_name("web") != user_name("WEB")
    assert user_name("Web") != user_name("WEB")
    assert user_name("b" * 40 + "1") != user_name("b" * 40 + "2")


def test_one_uid_for_everything_wraps_nothing(tmp_path: Path) -> None:
    """Not root (or a root-owned PIKU_ROOT): commands run as they are, no HOME change."""
    nobody = Identity()
    assert nobody.as_app("web", ["true"]) == ["true"]
    assert nobody.as_deploy(["git", "init"]) == ["git", "init"]
    assert nobody.deploy_owner() is None and nobody.account_env("web", Paths(tmp_path)) == {}


@pytest.fixture
def foreign_user() -> Iterator[tuple[str, str]]:
    """(app, user): a real system user with the app's user name that pikud did not make."""
    if os.geteuid() != 0:
        pytest.skip("useradd needs root")
    app = f"t{uuid.uuid4().hex[:10]}"
    user = user_name(app)
    subprocess.run(["useradd", "--system", "--user-group", "--no-create-home", "--shell",
                    "/usr/sbin/nologin", "--comment", "made by hand", user], check=True)
    try:
        yield app, user
    finally:
        subprocess.run(["userdel", user], check=True)
        subprocess.run(["groupdel", user], capture_output=True)     # if userdel left it


async def test_a_user_pikud_did_not_make_is_refused_not_adopted(
        foreign_user: tuple[str, str], tmp_path: Path) -> None:
    app, user = foreign_user
    with pytest.raises(AppUserError, match=f"user {user} exists but pikud did not make it"):
        lookup(app)
    with pytest.raises(AppUserError, match="GECOS"):
        await appusers.ensure(app, tmp_path)
    with pytest.raises(AppUserError):
        await appusers.remove(app)                  # nor removed
    assert pwd.getpwnam(user).pw_gecos == "made by hand"


def comment(user: str, gecos: str) -> None:
    subprocess.run(["usermod", "--comment", gecos, user], check=True)


async def test_a_user_made_for_another_app_is_refused(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two app names can meet after the truncation: the GECOS names the app it is for. The
    user is refused cron while it exists (the deny file in a temp folder)."""
    if os.geteuid() != 0:
        pytest.skip("useradd needs root")
    cron_deny = tmp_path / "cron.deny"
    monkeypatch.setattr(crondeny, "DENY_FILES", (
        crondeny.DenyFile(cron_deny, tmp_path / "cron.allow", True),))
    app = f"t{uuid.uuid4().hex[:10]}"
    made = await appusers.ensure(app, tmp_path)
    assert cron_deny.read_text() == f"{made.name}\n"
    try:
        assert pwd.getpwnam(made.name).pw_gecos == marker(app)
        assert lookup(app) == made and await appusers.ensure(app, tmp_path) == made
        comment(made.name, marker("other"))
        with pytest.raises(AppUserError, match=f"not {marker(app)!r}"):
            lookup(app)
        comment(made.name, marker(app))
    finally:
        assert await appusers.remove(app)
    assert lookup(app) is None
    with pytest.raises(KeyError):
        pwd.getpwnam(made.name)
    assert cron_deny.read_text() == ""


def test_loader_variables_cross_the_uid_switch_through_env() -> None:
    """What runs as root (prlimit, setpriv) gets no LD_* or glibc-unsecure variable; env(1)
    sets them again after the switch. One uid for everything: nothing moves."""
    who = Identity(Account("piku", 1000, 1000, "/home/piku"), "/usr/bin/setpriv", "/bin/env")
    switch = ["/usr/bin/setpriv", "--reuid=5", "--regid=5", "--clear-groups", "--"]
    argv = ["/usr/bin/prlimit", "--nofile=512", "--", *switch, "sh", "-c", "x"]
    env = {"LD_PRELOAD": "/x.so", "PATH": "/bin", "TMPDIR": "/t", "LD_BIND_NOW": "1"}
    assert who.past_root(argv, env) == (
        ["/usr/bin/prlimit", "--nofile=512", "--", *switch, "/bin/env", "LD_BIND_NOW=1",
         "LD_PRELOAD=/x.so", "TMPDIR=/t", "sh", "-c", "x"], {"PATH": "/bin"})
    assert who.past_root(["sh", "-c", "x"], env) == (["sh", "-c", "x"], env)
    assert Identity().past_root(argv, env) == (argv, env)


@pytest.fixture
def nobody() -> tuple[int, int]:
    """(uid, gid) to give trees to; chown needs root."""
    if os.geteuid() != 0:
        pytest.skip("chown needs root")
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


async def test_a_release_given_back_loses_group_and_other_write_and_set_id_bits(
        tmp_path: Path, nobody: tuple[int, int]) -> None:
    """A release step's `chmod -R a+w .` must not leave the release writable by the app's
    code; links are given as links, what they name is not touched."""
    release, outside = tmp_path / "release", tmp_path / "outside"
    (release / "sub").mkdir(parents=True)
    outside.write_text("x")
    os.chmod(outside, 0o666)
    (release / "ENV").write_text("A=1\n")
    (release / "tool").write_text("#!/bin/sh\n")
    (release / "link").symlink_to(outside)
    os.mkfifo(release / "sub" / "fifo")
    for path, mode in ((release / "ENV", 0o666), (release / "tool", 0o6777),
                       (release / "sub", 0o3777), (release, 0o777),
                       (release / "sub" / "fifo", 0o666)):
        os.chmod(path, mode)
    await appusers.give_tree(release, nobody, seal=True)
    modes = {path.name: stat.S_IMODE(path.lstat().st_mode)
             for path in (release, *release.rglob("*"))}
    assert modes == {"release": 0o755, "sub": 0o1755, "ENV": 0o644, "tool": 0o755,
                     "link": 0o777, "fifo": 0o666}, modes
    assert {(p.lstat().st_uid, p.lstat().st_gid) for p in (release, *release.rglob("*"))} \
        == {nobody}
    assert (outside.stat().st_uid, stat.S_IMODE(outside.stat().st_mode)) == (0, 0o666)


async def test_a_tree_given_through_a_link_is_refused_and_its_target_kept(
        tmp_path: Path, nobody: tuple[int, int]) -> None:
    """An app can swap its own folder for a link to /etc: root must not follow it."""
    target = tmp_path / "etc"
    target.mkdir()
    (target / "shadow").write_text("root:x\n")
    link = tmp_path / "data"
    link.symlink_to(target)
    with pytest.raises(AppUserError, match=f"{link} is not a folder"):
        await appusers.give_tree(link, nobody)
    assert (target / "shadow").stat().st_uid == 0 and target.stat().st_uid == 0


def test_a_link_in_the_layout_is_not_followed_when_root_gives_it_away(
        tmp_path: Path, nobody: tuple[int, int]) -> None:
    """The deploy user can make PIKU_ROOT/logs a link to /etc: pikud's start must not give
    /etc away; the folders root made are given."""
    paths = Paths(tmp_path / "piku")
    for name in LAYOUT:
        if name != "logs":
            (paths.root / name).mkdir(parents=True)
    etc = tmp_path / "etc"
    etc.mkdir()
    (paths.root / "logs").symlink_to(etc)
    who = Identity(Account("piku", *nobody, str(tmp_path)), "/usr/bin/setpriv", "/bin/env")
    changed = who.own_layout(paths)
    assert etc.stat().st_uid == 0
    assert set(changed) == {paths.root, *(paths.root / name for name in LAYOUT
                                          if name not in ("logs", "nginx"))}
    assert (paths.root / "apps").stat().st_uid == nobody[0]
