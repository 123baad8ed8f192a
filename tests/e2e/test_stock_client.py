"""What piku users do with the stock client, over the real sshd: its command lines as sent.

The stock `piku` script runs `ssh piku@host CMD APP ARGS...` (and `scp` for
`download`); these tests send those lines themselves (../shared/PIKU-REFERENCE.md).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from pikud.procman.children import MARKER, descendants, find_processes
from tests.conftest import Pikud, alive, wait_for
from tests.e2e.apps import get, python_app
from tests.e2e.conftest import SFTP_SERVER, SshServer
from tests.e2e.test_push import ssh_push

LOOP = "import os, time\nprint('up', os.getcwd(), os.environ.get('GREETING'), flush=True)\n" \
       "time.sleep(1000)\n"

# piku users' compound commands: a pipe to cat, cd && cmd, a sourced file then cmd.
COMPOUND = """\
web: python3 server.py 2>&1 | cat
worker: cd sub && python3 loop.py
sourced: . ./settings.sh; python3 sub/loop.py
"""


def app_pids(pikud: Pikud, app: str) -> set[int]:
    """Every live process of ``app`` (its slots' trees), found by pikud's marker in /proc."""
    return {pid for pid in find_processes([f"{MARKER}={app}:*".encode(),
                                           f"PIKU_ROOT={pikud.root}".encode()]) if alive(pid)}


def slot_trees(pikud: Pikud, app: str, count: int) -> dict[str, set[int]]:
    """Each RUNNING slot's main pid and its descendants, once ``count`` slots run."""
    def running() -> dict[str, int] | None:
        slots = {p["name"]: p["pid"] for p in pikud.processes(app) if p["state"] == "RUNNING"}
        return slots if len(slots) == count else None
    return {name: descendants(pid) for name, pid in wait_for(running, 30, f"{app} running").items()}


def test_compound_commands_restart_and_stop_whole(pikud: Pikud, sshd: SshServer,
                                                  tmp_path: Path) -> None:
    """dash does not exec the last command of `a | b` or `a; b`: the slot's main process is
    the shell. A restart must leave no old worker beside the new one, a stop nothing."""
    work = python_app(tmp_path / "cmp", "k1", procfile=COMPOUND, extra={
        "sub/loop.py": LOOP, "settings.sh": "export GREETING=hello\n"})
    ssh_push(sshd, work, "cmp")
    before = slot_trees(pikud, "cmp", 3)
    assert all(len(tree) >= 2 for tree in before.values()), before   # sh + its children
    assert get(next(p for p in pikud.processes("cmp") if p["kind"] == "web")["port"]) \
        == "k1 tinypkg=42"
    old = set().union(*before.values())

    restart = sshd.ssh("restart", "cmp")
    assert restart.returncode == 0, restart.stderr
    wait_for(lambda: not any(alive(pid) for pid in old), 15, "the old trees to end")
    after = slot_trees(pikud, "cmp", 3)
    assert not old & set().union(*after.values())
    assert app_pids(pikud, "cmp") == set().union(*after.values())      # nothing beside them
    argvs = [Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
             for pid in app_pids(pikud, "cmp")]
    loops = [argv for argv in argvs if argv[0].startswith(b"python") and b"loop.py" in argv[1]]
    assert len(loops) == 2, loops                  # one worker, one sourced: no second copy
    assert "up" in pikud.log_text("cmp", "worker.1") and "hello" in pikud.log_text(
        "cmp", "sourced.1")

    stop = sshd.ssh("stop", "cmp")
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: not app_pids(pikud, "cmp"), 15, "every process of cmp to end")
    assert "stopped" in stop.stdout and "did not track" not in pikud.log_text("cmp", "pikud")


def test_download_with_scp_in_both_protocols(pikud: Pikud, sshd: SshServer,
                                             tmp_path: Path) -> None:
    """The client's `download` is `scp HOST:PATH DEST`: since OpenSSH 9 over SFTP (sshd
    hands the forced command its `Subsystem sftp` line), with `scp -O` the legacy `scp -f`."""
    if not os.path.exists(SFTP_SERVER):
        pytest.skip(f"no {SFTP_SERVER} here")
    (pikud.root / "apps" / "dl").mkdir(parents=True)
    (pikud.root / "apps" / "dl" / "notes.txt").write_text("hello\n")
    options = sshd.ssh_command.replace(" -p ", " -P ").split()[1:]
    for protocol in ([], ["-O"]):
        dest = tmp_path / f"notes{len(protocol)}.txt"
        done = subprocess.run(["scp", *protocol, *options,
                               f"{sshd.user}@127.0.0.1:{pikud.root}/apps/dl/notes.txt", str(dest)],
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, (protocol, done.stderr)
        assert dest.read_text() == "hello\n"
    sent = sshd.ssh(SFTP_SERVER)          # an exec request naming it gets the fixed server
    assert "No such command" not in sent.stderr


def test_config_set_of_a_build_key_rebuilds_or_is_refused_like_a_push(
        pikud: Pikud, sshd: SshServer, tmp_path: Path) -> None:
    ssh_push(sshd, python_app(tmp_path / "bk", "b1"), "bk")
    first = pikud.api("GET", "/apps/bk")["release"]
    refused = sshd.ssh("config:set", "bk", "PYTHON_VERSION=3.99")
    assert refused.returncode == 1 and "PYTHON_VERSION=3.99: no python3.99" in refused.stderr, \
        refused.stderr
    assert "PYTHON_VERSION" not in sshd.ssh("config", "bk").stdout          # undone
    assert pikud.api("GET", "/apps/bk")["release"] == first
    rebuilt = sshd.ssh("config:set", "bk", "PYTHON_VERSION=3")
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert pikud.api("GET", "/apps/bk")["release"] == first + 1
    assert "PYTHON_VERSION=3" in sshd.ssh("config:live", "bk").stdout
    assert get(next(p for p in pikud.processes("bk") if p["kind"] == "web")["port"]) \
        == "b1 tinypkg=42"
