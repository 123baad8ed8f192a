"""Access per key through a real sshd: the forced command's NAME cannot be forged, a
push needs deploy, and a hand-run git-hook is refused."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import FAST, Pikud
from tests.e2e.apps import committed, git
from tests.e2e.conftest import SshServer

KEY = "tester@laptop"           # the sshd fixture's key, named by its comment


def grant(pikud: Pikud, key: str, app: str, role: str) -> None:
    pikud.api("PUT", f"/access/{key}/{app}", {"role": role})


def procfile_app(work: Path) -> Path:
    """A work tree that needs no build (the generic runtime): quick to push."""
    return committed(work, {"Procfile": "worker: sleep 300\n", "ENV": FAST}, "one")


def test_the_key_name_cannot_be_forged(pikud: Pikud, sshd: SshServer) -> None:
    pikud.add_app("a", "cron1: 0 0 1 1 * true\n", FAST)
    grant(pikud, KEY, "a", "read")
    grant(pikud, "boss", "*", "admin")
    assert sshd.ssh("ps", "a").returncode == 0
    words = sshd.ssh("NAME=boss", "stop", "a")
    assert "No such command 'NAME=boss'" in words.stderr
    # SendEnv NAME=boss reaches the forced command's shell; its own NAME= wins.
    argv = [*sshd.ssh_command.split(), "-o", "SendEnv=NAME FINGERPRINT",
            f"{sshd.user}@127.0.0.1", "stop", "a"]
    sent = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL,
                          env=dict(os.environ, NAME="boss", FINGERPRINT="SHA256:forged"))
    assert f"key '{KEY}' has read on app 'a'; stop needs deploy" in sent.stderr, sent.stderr
    entries = pikud.api("GET", "/audit?app=a")["lines"]
    refused = [e for e in entries if e["command"] == "stop"]
    assert [(e["key"], e["outcome"]) for e in refused] == [(KEY, "forbidden")]
    assert refused[0]["fingerprint"].startswith("SHA256:") and "forged" not in str(entries)


def test_a_push_needs_deploy_and_git_hook_cannot_be_run_by_hand(
        pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    work = procfile_app(tmp_path / "work")
    git(work, "remote", "add", "piku", f"{sshd.user}@127.0.0.1:p")
    grant(pikud, KEY, "p", "read")
    read_only = git(work, "push", "piku", "main", env=sshd.git_env(), check=False)
    assert read_only.returncode != 0
    assert f"key '{KEY}' has read on app 'p'; git-receive-pack needs deploy" in read_only.stderr
    assert not (pikud.root / "repos/p").exists()

    grant(pikud, KEY, "p", "deploy")
    git(work, "push", "piku", "main", env=sshd.git_env())
    releases = pikud.api("GET", "/apps/p/releases")["releases"]
    assert [(r["number"], r["pusher"]) for r in releases] == [(1, KEY)]
    revision = releases[0]["revision"]
    # The hook by hand, with the refs git would give it: no ticket, no deploy.
    argv = [*sshd.ssh_command.split(), f"{sshd.user}@127.0.0.1", "git-hook", "p"]
    replay = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                            input=f"{'0' * 40} {revision} refs/heads/main\n")
    assert replay.returncode != 0
    assert "no push ticket: git-hook is not run by hand" in replay.stderr, replay.stderr
    assert len(pikud.api("GET", "/apps/p/releases")["releases"]) == 1
    outcomes = [(e["command"], e["outcome"], e["key"])
                for e in pikud.api("GET", "/audit?app=p")["lines"]]
    assert outcomes == [("access:grant", "ok", None), ("git-receive-pack", "forbidden", KEY),
                        ("access:grant", "ok", None), ("git-receive-pack", "ok", KEY),
                        ("deploy", "ok", KEY), ("deploy", "push_refused", KEY)]
    pikud.api("POST", "/apps/p/stop")
