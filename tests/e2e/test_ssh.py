"""The ssh forced command over a real sshd: words reach piku unexpanded; old lines still work."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.conftest import Pikud
from tests.e2e.conftest import SshServer, keygen


def test_a_glob_is_not_expanded(pikud: Pikud, sshd: SshServer) -> None:
    result = sshd.ssh("ps", "/etc/*")
    assert result.returncode != 0
    assert "'/etc/*'" in result.stderr, result.stderr
    assert "/etc/passwd" not in result.stdout + result.stderr
    assert "Usage: piku" in sshd.ssh().stdout              # no command: the help, as before


def test_a_line_written_by_an_earlier_version_still_works(pikud: Pikud, sshd: SshServer,
                                                          tmp_path: Path) -> None:
    keys = sshd.home / ".ssh/authorized_keys"
    current = keys.read_text().splitlines()[0]
    keygen(tmp_path / "old", "old@laptop")
    options, _, _ = current.partition(" ssh-ed25519 ")
    old = options.replace(" --ssh-command\"", " $SSH_ORIGINAL_COMMAND\"")
    assert old != options
    keys.write_text(f"{current}\n{old} {(tmp_path / 'old.pub').read_text()}")
    client = dataclasses.replace(sshd, key=tmp_path / "old")
    assert client.ssh("apps").returncode == 0
    assert "Usage: piku" in client.ssh().stdout
    assert "No such command 'nope'" in client.ssh("nope").stderr
