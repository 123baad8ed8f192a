"""A real OpenSSH server on 127.0.0.1 for pushes and commands over ssh.

The server runs from its own config and host key in a temp folder, on a port
the test picks; it is stopped at teardown. It takes NAME and FINGERPRINT from a
client's SendEnv (AcceptEnv), as a careless server might: the forced command
must override them (test_access_ssh). In the ``sshd`` fixture the test
account is the one running the tests, and ``piku setup:ssh`` writes its key
into an authorized_keys of its own; test_install's server reads the piku
user's own ``~/.ssh/authorized_keys``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import Pikud, wait_for
from tests.integration.nginx_server import NginxServer, fronted_by_nginx
from tests.net import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"       # Debian's sshd_config names it so


@dataclass
class SshServer:
    port: int
    home: Path                 # HOME of the test account for `piku setup:ssh`
    key: Path                  # the client's private key
    user: str

    @property
    def ssh_command(self) -> str:
        return (f"ssh -i {self.key} -p {self.port} -o IdentitiesOnly=yes -o BatchMode=yes "
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")

    def ssh(self, *words: str, tty: bool = False, timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        argv = [*self.ssh_command.split(), *(["-tt"] if tty else []),
                f"{self.user}@127.0.0.1", *words]
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)

    def git_env(self) -> dict[str, str]:
        return dict(os.environ, GIT_SSH_COMMAND=self.ssh_command)


def keygen(path: Path, comment: str) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True)


@contextlib.contextmanager
def sshd_on_loopback(base: Path, authorized_keys: str) -> Iterator[int]:
    """A real sshd on a free loopback port, from ``base``'s own config and host key,
    reading ``authorized_keys`` (sshd's AuthorizedKeysFile); yields the port once it
    listens and stops it afterwards."""
    keygen(base / "hostkey", "host")
    port = free_port()
    config = base / "sshd_config"
    config.write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {base / 'hostkey'}
PidFile {base / 'sshd.pid'}
AuthorizedKeysFile {authorized_keys}
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
PrintMotd no
LogLevel VERBOSE
AcceptEnv NAME FINGERPRINT
""" + (f"Subsystem sftp {SFTP_SERVER}\n" if os.path.exists(SFTP_SERVER) else ""))
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # sshd's privilege separation dir
    with open(base / "sshd.log", "wb") as log:
        server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=log)
        try:
            def listening() -> bool:
                assert server.poll() is None, (base / "sshd.log").read_text()
                with socket.socket() as sock:
                    return sock.connect_ex(("127.0.0.1", port)) == 0
            wait_for(listening, 10, "sshd to listen")
            yield port
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)


@pytest.fixture
def sshd(pikud: Pikud, short_root: Path) -> Iterator[SshServer]:
    if not os.path.exists(SSHD):
        pytest.skip("OpenSSH server is not installed")
    base = Path(tempfile.mkdtemp(prefix="pks-", dir="/tmp"))
    home = base / "home"
    home.mkdir()
    keygen(base / "client", "tester@laptop")
    user = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True,
                                                    text=True).stdout.strip()
    setup = subprocess.run([sys.executable, "-m", "pikud.cli", "setup:ssh",
                            str(base / "client.pub")],
                           env=dict(pikud.env, HOME=str(home)), capture_output=True, text=True)
    assert setup.returncode == 0, setup.stderr
    try:
        with sshd_on_loopback(base, str(home / ".ssh" / "authorized_keys")) as port:
            yield SshServer(port, home, base / "client", user)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def fronted(tmp_path: Path) -> Iterator[tuple[NginxServer, Pikud]]:
    """A real nginx and a pikud whose sites it serves (test_nginx_deploy, test_nginx_kinds)."""
    with fronted_by_nginx(tmp_path) as made:
        yield made
