"""State the daemon keeps: requests during boot, corrupt files, a full disk, stale releases."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FAST, Pikud, alive, wait_for
from tests.e2e.apps import git, local_remote, push


def desired(daemon: Pikud) -> dict[str, str]:
    state = json.loads((daemon.root / "pikud/state.json").read_text())
    return {name: app["desired"] for name, app in state["apps"].items()}


def running(daemon: Pikud, app: str, count: int = 1) -> list[dict[str, object]]:
    return wait_for(lambda: (procs := daemon.processes(app)) and len(procs) == count
                    and all(p["state"] == "RUNNING" for p in procs) and procs, 15,
                    f"{app} to run")  # type: ignore[no-any-return]


def test_requests_during_a_stretched_boot_lose_no_app(pikud_factory, short_root: Path) -> None:
    """kill -9, restart, `piku apps; piku stop a` at once: only a stops, the rest run."""
    # stop_leftovers waits PIKU_STOP_TIMEOUT for the worker that ignores SIGTERM.
    (short_root / "pikud.toml").write_text("[defaults]\nPIKU_STOP_TIMEOUT = 2\n")
    daemon: Pikud = pikud_factory()
    for name, command in (("a", "sleep 300"), ("b", "sleep 300"),
                          ("stubborn", "trap '' TERM; sleep 300")):
        daemon.add_app(name, f"worker: {command}\n", FAST)
        daemon.api("POST", f"/apps/{name}/deploy")
        running(daemon, name)
    daemon.kill9()
    daemon.start()
    listed = daemon.cli("apps", check=True).stdout
    assert daemon.output().count("ready:") == 1, "the boot was over before `piku apps`"
    stopped = daemon.cli("stop", "a", check=True)
    assert listed.split() == ["*", "a", "*", "b", "*", "stubborn"], listed
    assert "a: stopped" in stopped.stdout
    # Boot may have started a before the stop got its lock; either way a ends stopped.
    wait_for(lambda: daemon.output().count("ready:") == 2, 15, "boot to end")
    running(daemon, "b")
    running(daemon, "stubborn")
    assert daemon.processes("a") == []
    assert desired(daemon) == {"a": "stopped", "b": "running", "stubborn": "running"}


def pushed_app(daemon: Pikud, work: Path, name: str, pushes: int) -> list[str]:
    """A worker app pushed ``pushes`` times through a local remote; its revisions."""
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    git(work, "config", "user.email", "tester@example.invalid")
    git(work, "config", "user.name", "Tester")
    (work / "Procfile").write_text("worker: sleep 300\n")
    (work / "ENV").write_text(FAST)
    local_remote(work, name)
    revisions = []
    for n in range(pushes):
        (work / "VERSION").write_text(f"{n}\n")
        git(work, "add", "-A")
        git(work, "commit", "--quiet", "-m", f"v{n}")
        push(work, daemon.env)
        revisions.append(git(work, "rev-parse", "HEAD").stdout.strip())
    return revisions


def truncate(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) // 2])


def test_corrupt_state_files_are_set_aside_and_rebuilt(pikud_factory, tmp_path: Path) -> None:
    daemon: Pikud = pikud_factory()
    daemon.add_app("good", "worker: sleep 300\ncron1: 0 3 * * * echo nightly\n", FAST)
    daemon.api("POST", "/apps/good/deploy")
    revisions = pushed_app(daemon, tmp_path / "work", "pushed", 2)
    daemon.api("POST", "/apps/good/cron/cron1/run")
    wait_for(lambda: daemon.api("GET", "/apps/good/cron")["jobs"][0]["last_run"]["status"]
             == "exit status 0", 10, "the cron run")
    daemon.stop()
    state = daemon.root / "pikud"
    for path in (state / "state.json", state / "releases/pushed.json", state / "cron.json"):
        truncate(path)

    daemon.start()
    wait_for(lambda: "ready:" in daemon.output().split("listening on")[-1], 15, "the boot")
    out = daemon.output()
    assert out.count("corrupt state file set aside:") == 3, out
    for pattern in ("state.json.corrupt-*", "releases/pushed.json.corrupt-*",
                    "cron.json.corrupt-*"):
        assert len(list(state.glob(pattern))) == 1, pattern
    running(daemon, "good")                 # state.json lost: apps with code run, as piku's do
    running(daemon, "pushed")
    assert desired(daemon) == {"good": "running", "pushed": "running"}
    releases = daemon.api("GET", "/apps/pushed/releases")["releases"]
    assert [(r["number"], r["revision"], r["current"]) for r in releases] == [
        (2, revisions[1], True), (1, revisions[0], False)]
    assert json.loads((state / "releases/pushed.json").read_text())["current"] == 2

    listed = daemon.cli("apps", check=True).stdout.splitlines()
    assert listed[:2] == ["* good", "* pushed"]
    problems = "\n".join(listed[2:])
    assert "! pikud/state.json was corrupt" in problems
    assert "every app with code in apps/ was taken as running" in problems
    assert "! pikud/cron.json was corrupt" in problems and "starts afresh" in problems
    assert "! pushed: pikud/releases/pushed.json was corrupt" in problems
    assert "2 releases rebuilt from releases/pushed/ (current: 2)" in problems
    ps = daemon.cli("ps", "pushed", check=True).stdout
    assert "! pikud/releases/pushed.json was corrupt" in ps
    assert "pushed.json" not in daemon.cli("ps", "good", check=True).stdout
    assert daemon.api("GET", "/apps/good/cron")["jobs"][0]["last_run"] is None


@pytest.fixture
def small_disk(short_root: Path) -> Iterator[Path]:
    """PIKU_ROOT on a 2 MB tmpfs, so the disk really fills up (mount needs root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for a full disk needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(short_root)],
                   check=True)
    try:
        yield short_root
    finally:
        subprocess.run(["umount", "-l", str(short_root)], check=True)


def fill(path: Path) -> None:
    """Write ``path`` until the disk is full."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def test_on_a_full_disk_stop_and_restart_work_and_the_api_tells_the_truth(
        small_disk: Path, pikud_factory) -> None:
    daemon: Pikud = pikud_factory()
    daemon.add_app("calm", "worker: sleep 300\n", FAST)
    daemon.add_app("flood", "worker: yes flooding-the-log-flooding-the-log\n", FAST)
    daemon.api("POST", "/apps/calm/deploy")
    daemon.api("POST", "/apps/flood/deploy")
    running(daemon, "calm")
    flood = running(daemon, "flood")[0]["pid"]
    fill(small_disk / "filler")

    before = daemon.process("calm", "calm:worker.1")["pid"]
    restarted = daemon.cli("restart", "calm")
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr
    assert running(daemon, "calm")[0]["pid"] != before
    # The restart's save took the page its LIVE_ENV freed; the flood takes the rest back.
    wait_for(lambda: os.statvfs(small_disk).f_bavail == 0, 10, "the disk to be full again")
    for name in ("flood", "calm"):
        pid = daemon.processes(name)[0]["pid"]
        result = daemon.cli("stop", name)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"{name}: stopped" in result.stdout and "(no processes)" in result.stdout
        assert not alive(pid)
        assert "could not be saved (" in result.stdout        # shown as a problem
    assert not alive(flood)
    assert "state not saved:" in daemon.output() and "No space left" in daemon.output()
    assert desired(daemon) == {"calm": "running", "flood": "running"}     # as last saved

    assert "log lines dropped: cannot write" in daemon.output()
    (small_disk / "filler").unlink()
    for log in (small_disk / "logs/flood").glob("worker.1.log*"):
        log.unlink()
    daemon.cli("start", "calm", check=True)       # the next save writes every change since
    assert desired(daemon) == {"calm": "running", "flood": "stopped"}
    assert "state saved again:" in daemon.output()
    assert "could not be saved" not in daemon.cli("ps", "calm", check=True).stdout


def test_release_folders_of_a_push_killed_with_pikud_are_pruned(pikud_factory,
                                                                 tmp_path: Path) -> None:
    daemon: Pikud = pikud_factory()
    work = tmp_path / "work"
    pushed_app(daemon, work, "pushed", 1)
    (work / "Procfile").write_text("worker: sleep 300\nrelease: touch built; sleep 60\n")
    git(work, "commit", "--quiet", "-am", "slow release step")
    pushing = subprocess.Popen(["git", "-C", str(work), "push", "--quiet", "piku", "main"],
                            env=dict(daemon.env), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    releases = daemon.root / "releases/pushed"
    try:
        wait_for(lambda: (releases / "2/built").exists(), 15, "the release step of push 2")
        daemon.kill9()
        assert pushing.wait(15) != 0
    finally:
        pushing.kill()
        pushing.wait()
    daemon.start()
    wait_for(lambda: "ready:" in daemon.output().split("listening on")[-1], 15, "the boot")
    assert "removing release folder" in daemon.output()
    assert sorted(p.name for p in releases.iterdir()) == ["1"]
    running(daemon, "pushed")

    (releases / "7").mkdir()                        # as a push killed at any other time leaves
    (work / "Procfile").write_text("worker: sleep 300\n")
    git(work, "commit", "--quiet", "-am", "quick again")
    push(work, daemon.env)
    assert sorted(p.name for p in releases.iterdir()) == ["1", "8"]
    assert [r["number"] for r in daemon.api("GET", "/apps/pushed/releases")["releases"]] == [8, 1]


def test_a_state_file_corrupt_beyond_a_value_error_is_set_aside_too(pikud_factory,
                                                                    short_root: Path) -> None:
    """A port of 1e400 (OverflowError) or JSON nested 100,000 deep (RecursionError)."""
    state = short_root / "pikud"
    state.mkdir()
    (state / "state.json").write_text('{"apps": {"x": {"desired": "running", '
                                      '"ports": {"web": 1e400}}}}\n')
    (state / "cron.json").write_text("[" * 100_000 + "]" * 100_000)
    daemon: Pikud = pikud_factory()
    wait_for(lambda: "ready:" in daemon.output(), 15, "the boot")
    assert daemon.output().count("corrupt state file set aside:") == 2, daemon.output()
    assert len(list(state.glob("state.json.corrupt-*"))) == 1
    assert len(list(state.glob("cron.json.corrupt-*"))) == 1


def test_an_app_gone_from_disk_keeps_its_state_and_the_others_still_save(
        pikud_factory, short_root: Path) -> None:
    """state.json names an app whose folders were removed by hand: its entry is kept
    as it was, and saving the others' state (a stop, here) still works."""
    daemon: Pikud = pikud_factory()
    for name in ("here", "gone"):
        daemon.add_app(name, "worker: sleep 300\n", FAST)
        daemon.api("POST", f"/apps/{name}/deploy")
        running(daemon, name)
    daemon.stop()
    subprocess.run(["rm", "-rf", str(short_root / "apps/gone")], check=True)
    daemon.start()
    running(daemon, "here")
    daemon.cli("stop", "here", check=True)
    assert desired(daemon) == {"gone": "running", "here": "stopped"}
