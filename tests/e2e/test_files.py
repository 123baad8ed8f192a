"""What a local user or a web client can reach of an app's files, after a real push.

Config and environment are 0600 in 0700 folders (and an install with the old
modes is fixed at the next start); a static folder that resolves outside the
app's release is refused at push and at config:set, naming the setting, and
a committed symlink out of a static folder is never served.
"""

from __future__ import annotations

import stat
from pathlib import Path

from tests.conftest import Pikud, wait_for
from tests.e2e.apps import git, local_remote, push

APP = "files"
PROCFILE = ("web: exec python3 -m http.server $PORT --bind 127.0.0.1\n"
            "cron1: 0 0 1 1 * echo yearly\nstatic: /pub:public\n")


def commit(work: Path, message: str) -> None:
    git(work, "add", "-A")
    git(work, "-c", "user.email=t@example.invalid", "-c", "user.name=T",
        "commit", "--quiet", "--allow-empty", "-m", message)


def private(root: Path) -> dict[str, int]:
    """The mode of everything that holds config or environment, by path under ``root``."""
    names = ["envs", "logs", "pikud", "pikud/releases", "pikud/state.json",
             f"pikud/releases/{APP}.json", "pikud/cron.json", f"envs/{APP}",
             f"envs/{APP}/ENV", f"envs/{APP}/LIVE_ENV", f"envs/{APP}/SCALING"]
    return {name: stat.S_IMODE((root / name).stat().st_mode) for name in names}


def repo(work: Path, public: str | None = None) -> Path:
    """The app's work tree: a web process, a cron job and a static folder (a link if ``public``)."""
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    (work / "Procfile").write_text(PROCFILE)
    if public is not None:
        (work / "public").symlink_to(public)
    else:
        (work / "public").mkdir()
        (work / "public" / "index.html").write_text("hello\n")
    commit(work, "first")
    local_remote(work, APP)
    return work


def test_static_folders_stay_in_the_release(pikud: Pikud, tmp_path: Path) -> None:
    work = repo(tmp_path / "work", public="/etc")
    pushed = push(work, pikud.env, check=False)
    code, out = pushed.returncode, pushed.stderr
    assert code != 0 and "static: 'public' resolves to /etc" in out, out

    (work / "public").unlink()
    (work / "public").mkdir()
    (work / "public" / "index.html").write_text("hello\n")
    (work / "public" / "passwd").symlink_to("/etc/passwd")
    commit(work, "a real folder, with a link out of it")
    pushed = push(work, pikud.env, check=False)
    code, out = pushed.returncode, pushed.stderr
    assert code == 0, out
    assert pikud.get(APP, "/pub/index.html") == (200, "hello\n")
    status, body = pikud.get(APP, "/pub/passwd")
    assert status == 404 and "root:" not in body
    for key, value in {"NGINX_STATIC_PATHS": f"/leak:{pikud.root}/envs",
                       "NGINX_INCLUDE_FILE": "../../../../etc/passwd",
                       "NGINX_CACHE_PATH": "/etc"}.items():
        refused = pikud.cli("config:set", APP, f"{key}={value}")
        assert refused.returncode == 1 and f"Error: {key}: " in refused.stderr, refused.stderr
    assert pikud.get(APP, f"/leak/{APP}/ENV")[0] == 404


def test_config_is_private_and_old_modes_are_fixed_at_start(pikud: Pikud,
                                                           tmp_path: Path) -> None:
    work = repo(tmp_path / "work")
    assert push(work, pikud.env).returncode == 0
    pikud.cli("config:set", APP, "SECRET_KEY=s3cret", check=True)
    pikud.cli("ps:scale", APP, "web=2", check=True)
    pikud.cli("cron:run", APP, "cron1", check=True)
    commit(work, "a deploy that records the config")
    assert push(work, pikud.env).returncode == 0
    assert "s3cret" in (pikud.root / f"pikud/releases/{APP}.json").read_text()
    wait_for(lambda: (pikud.root / "pikud/cron.json").exists(), 10, "cron.json")
    expected = {name: 0o700 if name.count("/") < 2 and "." not in name else 0o600
                for name in private(pikud.root)}
    assert private(pikud.root) == expected

    pikud.stop()
    for name in expected:                               # as earlier versions left them
        (pikud.root / name).chmod(0o755 if expected[name] == 0o700 else 0o644)
    pikud.start()
    assert private(pikud.root) == expected
    assert pikud.output().count("permissions: took group and other access off 11 ") == 1
