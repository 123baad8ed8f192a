"""Ceilings on processes, a start that runs out of descriptors, and processes pikud lost track
of."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from pikud.control.client import RemoteError
from tests.conftest import FAST, Pikud, alive, app_processes, nofile, wait_for


def pids_of(root: Path, app: str) -> set[int]:
    """Live processes whose environment says they belong to ``app`` (tracked or not)."""
    from pikud.procman.children import find_processes
    return find_processes((f"PIKU_PROCESS={app}:*".encode(), f"PIKU_ROOT={root}".encode()))


def refused(daemon: Pikud, method: str, path: str, body: dict | None = None) -> str:
    with pytest.raises(RemoteError) as caught:
        daemon.api(method, path, body)
    assert caught.value.code == "too_many_processes", caught.value
    return str(caught.value)


def commit(tmp_path: Path, repo: Path, files: dict[str, str]) -> str:
    """A commit with ``files`` in the bare ``repo``, reachable by no ref (as a push brings it)."""
    work = tmp_path / "work"
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(work)]
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    for name, text in files.items():
        (work / name).write_text(text)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    subprocess.run(["git", "init", "-q", "--bare", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "fetch", "-q", str(work), "HEAD"], check=True)
    return subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


def test_formations_over_the_ceilings_are_refused_before_anything_starts(
        pikud: Pikud, tmp_path: Path) -> None:
    root = pikud.root
    pikud.add_app("big", "worker: sleep 300\n", FAST)
    (root / "envs/big").mkdir(parents=True)
    (root / "envs/big/SCALING").write_text("worker: 600\n")
    message = refused(pikud, "POST", "/apps/big/deploy")
    assert ("big: the Procfile and envs/big/SCALING ask for 600 processes (worker: 600); "
            "max_processes_per_app is 100 (pikud.toml)") in message
    pikud.add_app("wide", "".join(f"w{i}: sleep 300\n" for i in range(10_000)), FAST)
    assert "ask for 10000 processes (w0: 1, w1: 1, w2: 1 and 9997 more kinds)" in refused(
        pikud, "POST", "/apps/wide/deploy")
    assert not app_processes(root)

    # A push: refused after the checkout, before the preflight step or the build.
    marker = tmp_path / "built"
    revision = commit(tmp_path, root / "repos/pushed", {
        "Procfile": f"preflight: touch {marker}\nworker: sleep 300\n"})
    (root / "envs/pushed").mkdir(parents=True)
    (root / "envs/pushed/SCALING").write_text("worker: 600\n")
    assert "max_processes_per_app is 100" in refused(pikud, "POST", "/apps/pushed/deploy", {
        "revision": revision, "ref": "refs/heads/main", "old": "0" * 40})
    assert not marker.exists() and not list((root / "releases").glob("pushed/*"))

    # ps:scale and config:set: refused before the file is written; what runs is untouched.
    pikud.add_app("served", "wsgi: app:application\nworker: sleep 300\n", FAST)
    (root / "envs/big/SCALING").write_text("worker: 1\n")
    pikud.api("POST", "/apps/big/deploy")
    before = pids_of(root, "big")
    scale = pikud.cli("ps:scale", "big", "worker=101")
    assert scale.returncode != 0 and "101 processes" in scale.stdout + scale.stderr
    assert (root / "envs/big/SCALING").read_text() == "worker: 1\n"
    config = pikud.cli("config:set", "served", "UWSGI_PROCESSES=200")
    assert config.returncode != 0
    assert "202 processes (wsgi: 201, worker: 1); max_processes_per_app is 100" in (
        config.stdout + config.stderr)
    assert not (root / "envs/served/ENV").exists()
    # A hand edit: reported and ignored like any bad edit.
    (root / "envs/big/SCALING").write_text("worker: 150\n")
    wait_for(lambda: "ignored an edit" in pikud.log_text("big", "pikud"), 10, "the report")
    assert "ask for 150 processes" in pikud.log_text("big", "pikud")
    assert pids_of(root, "big") == before


def test_the_daemon_wide_ceiling_counts_the_other_apps(pikud_factory, short_root: Path) -> None:
    (short_root / "pikud.toml").write_text("max_processes_per_app = 4\nmax_processes = 5\n")
    daemon: Pikud = pikud_factory()
    for name in ("a", "b"):
        daemon.add_app(name, "worker: sleep 300\n", FAST)
        (short_root / "envs" / name).mkdir(parents=True)
        (short_root / "envs" / name / "SCALING").write_text("worker: 3\n")
    daemon.api("POST", "/apps/a/deploy")
    assert ("b: the Procfile and envs/b/SCALING ask for 3 processes (worker: 3), and the "
            "other apps run 3: 6 in all; max_processes is 5 (pikud.toml)") in refused(
                daemon, "POST", "/apps/b/deploy")
    assert not pids_of(short_root, "b")
    daemon.api("POST", "/apps/a/stop")          # a stopped app counts for nothing
    daemon.api("POST", "/apps/b/deploy")
    assert len(pids_of(short_root, "b")) == 3


def test_a_start_that_runs_out_of_descriptors_leaves_nothing_behind(pikud_factory) -> None:
    daemon: Pikud = pikud_factory(preexec_fn=nofile(256, 256))        # about 50 processes' worth
    root = daemon.root
    for name in ("small", "big"):
        daemon.add_app(name, "worker: sleep 300\n", FAST)
        daemon.api("POST", f"/apps/{name}/deploy")
    kept = pids_of(root, "big")
    with pytest.raises(RemoteError) as caught:
        daemon.api("POST", "/apps/big/scale", {"scaling": {"worker": 100}})
    assert "could not start" in str(caught.value) and "Too many open files" in str(caught.value)
    assert pids_of(root, "big") == kept and all(alive(pid) for pid in kept)
    assert daemon.api("GET", "/apps/big")["formation"] == {"worker": 1}
    # A first start that fails half-way leaves nothing either.
    daemon.add_app("huge", "worker: sleep 300\n", FAST)
    (root / "envs/huge").mkdir(parents=True)
    (root / "envs/huge/SCALING").write_text("worker: 100\n")
    with pytest.raises(RemoteError):
        daemon.api("POST", "/apps/huge/deploy")
    assert not pids_of(root, "huge")
    assert daemon.api("GET", "/apps/huge")["state"] == "stopped"
    # The daemon still has the descriptors to restart another app.
    old = pids_of(root, "small")
    daemon.cli("restart", "small", check=True)
    wait_for(lambda: daemon.process("small", "small:worker.1")["state"] == "RUNNING", 10,
             "small to run again")
    assert pids_of(root, "small").isdisjoint(old)


def test_stop_and_destroy_stop_the_processes_pikud_does_not_track(pikud: Pikud) -> None:
    root = pikud.root
    for name in ("a", "ab"):
        pikud.add_app(name, "worker: sleep 300\n", FAST)
        pikud.api("POST", f"/apps/{name}/deploy")

    def stray(process: str) -> subprocess.Popen[bytes]:
        env = {"PATH": "/usr/bin:/bin", "PIKU_ROOT": str(root), "PIKU_PROCESS": process}
        return subprocess.Popen(["sleep", "300"], env=env, start_new_session=True)

    strays = [stray("a:worker.9"), stray("ab:worker.9")]
    try:
        pikud.cli("stop", "a", check=True)
        wait_for(lambda: strays[0].poll() is not None, 10, "a's stray to stop")
        assert "a: stopped 1 processes it did not track" in pikud.log_text("a", "pikud")
        assert strays[1].poll() is None and pids_of(root, "ab")    # another app's are untouched
        strays.append(stray("a:web.3"))
        pikud.cli("destroy", "a", check=True)
        wait_for(lambda: strays[2].poll() is not None, 10, "a's second stray to stop")
        assert strays[1].poll() is None
    finally:
        for proc in strays:
            proc.kill()
            proc.wait()



def test_an_app_that_cannot_start_at_boot_is_started_again_later(pikud_factory,
                                                                 short_root: Path) -> None:
    """A boot start refused for want of descriptors is tried again once they are back.

    While boot waits for a leftover that ignores SIGTERM, the test holds 100
    control-socket connections: each is a descriptor of the daemon's 256.
    """
    (short_root / "pikud.toml").write_text(
        "control_idle_timeout = 600\n[defaults]\nPIKU_STOP_TIMEOUT = 3\n")
    daemon: Pikud = pikud_factory(preexec_fn=nofile(256, 256))
    daemon.add_app("stubborn", "worker: trap '' TERM; sleep 300\n", FAST)
    daemon.add_app("big", "worker: sleep 300\n", FAST)
    (daemon.root / "envs/big").mkdir(parents=True)
    (daemon.root / "envs/big/SCALING").write_text("worker: 40\n")
    for name in ("stubborn", "big"):
        daemon.api("POST", f"/apps/{name}/deploy")
    wait_for(lambda: len(pids_of(daemon.root, "big")) == 40, 20, "40 workers")
    daemon.kill9()
    daemon.start(preexec_fn=nofile(256, 256))
    held = []
    try:
        for _ in range(100):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(daemon.root / "pikud.sock"))
            held.append(sock)
        assert "ready:" not in daemon.output().split("listening on")[-1], "boot was too quick"
        wait_for(lambda: "big: starting again in 5s" in daemon.output(), 20, "a retry planned")
        assert not pids_of(daemon.root, "big")
        assert daemon.api("GET", "/apps/big")["state"] == "running"
    finally:
        for sock in held:
            sock.close()
    wait_for(lambda: "big: started after failing at boot" in daemon.output(), 20,
             "the retry to start big")
    wait_for(lambda: len(pids_of(daemon.root, "big")) == 40, 20, "40 workers again")
