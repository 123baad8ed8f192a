"""scripts/install on this machine, for real, as root: a fresh server in one command.

The installer creates the piku user, /opt/pikud and its files in /etc, with
nginx's default server on loopback ports the test picks. Then, as the
installer says: pikud started as piku, a real sshd, and a `git push` over ssh
as piku@127.0.0.1 that deploys a Flask app answering through nginx. nginx is
a master of the test's own (running as piku, so that pikud can reload it)
whose http {} includes the installed /etc/nginx/conf.d/pikud.conf; the
machine's nginx is never started or reloaded. The installer runs a second
time (an upgrade: the app keeps answering) and then with --uninstall. The
piku user did not exist before (the test skips otherwise), so it is removed
at the end with its home.
"""

from __future__ import annotations

import contextlib
import grp
import http.client
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import app_processes
from tests.e2e.apps import git, python_app
from tests.e2e.conftest import SSHD, keygen, sshd_on_loopback
from tests.e2e.test_nginx_deploy import statuses_of
from tests.e2e.test_nginx_kinds import FLASK_APP
from tests.integration.nginx_server import NginxServer
from tests.nginx_master import DEADLINE
from tests.processes import all_pids, proc_stat, stop_session
from tests.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "scripts" / "install"
VENV = Path("/opt/pikud")
UNIT = Path("/etc/systemd/system/pikud.service")
ENABLED = Path("/etc/systemd/system/multi-user.target.wants/pikud.service")
SNIPPET = Path("/etc/nginx/conf.d/pikud.conf")
SUDOERS = Path("/etc/sudoers.d/pikud")
DEFAULT_SITE = Path("/etc/nginx/sites-enabled/default")
HOME = Path("/home/piku")
INSTALL_DEADLINE = 300.0        # apt and pip may fetch packages

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the installer runs as root"),
    pytest.mark.skipif(shutil.which("apt-get") is None, reason="the installer needs apt-get"),
    pytest.mark.skipif(shutil.which("nginx") is None or not os.path.exists(SSHD),
                       reason="nginx and the OpenSSH server are not installed"),
]


def install(*args: str) -> str:
    """Run scripts/install; fail with its output unless it succeeds; return its stdout."""
    result = subprocess.run(["bash", str(INSTALL), *args], capture_output=True, text=True,
                            timeout=INSTALL_DEADLINE, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def piku_processes() -> dict[int, str]:
    """Live processes of the piku user (zombies aside): pid -> command line."""
    uid = pwd.getpwnam("piku").pw_uid
    found = {}
    for pid in all_pids():
        with contextlib.suppress(OSError):
            if os.stat(f"/proc/{pid}").st_uid == uid and (proc_stat(pid) or ["Z"])[0] != "Z":
                found[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    return {pid: line.decode(errors="replace") for pid, line in found.items()}


@pytest.fixture
def fresh_machine(deny_files_restored: None) -> Iterator[None]:
    """This machine without a piku install; afterwards, the same again (the test
    uninstalls; this removes the piku user and its home, and whatever it ran)."""
    for path in (VENV, SNIPPET, UNIT, SUDOERS):
        if path.exists():
            pytest.skip(f"{path} exists: pikud is installed here, and the test would change it")
    with contextlib.suppress(KeyError):
        pwd.getpwnam("piku")
        pytest.skip("a piku user exists on this machine; the test would change it")
    default_site = os.readlink(DEFAULT_SITE) if DEFAULT_SITE.is_symlink() else None
    try:
        yield
    finally:
        if VENV.exists():       # the test failed before --uninstall
            subprocess.run(["bash", str(INSTALL), "--uninstall"], capture_output=True,
                           timeout=INSTALL_DEADLINE)
        left = piku_processes()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", "--remove", "piku"], capture_output=True)
        for user in pwd.getpwall():         # the apps' own users, under --as-root
            if user.pw_gecos.startswith("pikud app "):
                subprocess.run(["userdel", user.pw_name], capture_output=True)
        if default_site is not None and not DEFAULT_SITE.is_symlink():
            DEFAULT_SITE.symlink_to(default_site)
        assert not left, f"processes of piku left running: {left}"


def https_answer(port: int, host: str) -> bytes:
    """GET / over TLS with ``host`` as the server name (SNI), which http.client does
    not send to 127.0.0.1: the whole answer, headers and body."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as raw, \
            context.wrap_socket(raw, server_hostname=host) as tls:
        tls.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        chunks = []
        while chunk := tls.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_install_push_upgrade_uninstall(fresh_machine: None, tmp_path: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="pki-", dir="/tmp"))
    base.chmod(0o755)
    (base / "include").mkdir()
    (base / "include" / "pikud.conf").symlink_to(SNIPPET)      # the installed file, only
    keygen(base / "client", "tester@laptop")
    server = NginxServer(base, root=HOME / ".piku", include=base / "include", user="piku")
    ports = ["--http-port", str(server.http_port), "--https-port", str(server.https_port),
             "--listen", "127.0.0.1"]
    daemon: subprocess.Popen[bytes] | None = None
    debian_site = DEFAULT_SITE.is_symlink()
    try:
        said = install(*ports, "--key", str(base / "client.pub"), "--host", "127.0.0.1")

        # What it installed, and what it says to do next.
        assert "created user piku" in said and (HOME.stat().st_mode & 0o777) == 0o711
        assert (VENV / "bin" / "pikud").exists() and UNIT.exists() and ENABLED.is_symlink()
        assert (SUDOERS.stat().st_mode & 0o777) == 0o440
        assert f"listen 127.0.0.1:{server.http_port} default_server;" in SNIPPET.read_text()
        assert not DEFAULT_SITE.exists(), "Debian's default site claims the default server"
        assert "Added key" in said
        assert f"{VENV}/bin/piku --ssh-command" in (HOME / ".ssh" / "authorized_keys").read_text()
        if shutil.which("systemd-analyze"):         # the unit as installed, its pikud there
            verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(UNIT)],
                                    capture_output=True, text=True, timeout=60)
            assert (verify.returncode, verify.stderr) == (0, ""), verify.stderr
        if not os.path.isdir("/run/systemd/system"):
            assert "systemd is not PID 1 here" in said
        # nginx and pikud, as the installer says; pikud reloads this test's nginx.
        daemon = start_as_said(said, base, server)
        push_hello(said, base, server, tmp_path)
        # The reload is asynchronous: an old worker may take this connection and refuse it.
        def over_https() -> bool:
            with contextlib.suppress(ssl.SSLError):
                return https_answer(server.https_port, "hello.example").endswith(b"flask i1")
            return False
        wait_for(over_https, DEADLINE, "hello.example over https")
        with pytest.raises(http.client.RemoteDisconnected):        # 444: no answer at all
            server.request("unknown.example")
        with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
            https_answer(server.https_port, "unknown.example")  # ssl_reject_handshake

        # Run again: an upgrade; the app keeps answering through nginx all along,
        # also while pikud may still be re-executing after the installer is done.
        server.wait_settled()       # the push's reload is over: its old worker is gone
        with statuses_of(server, "hello.example") as statuses:
            again = install(*ports, "--host", "127.0.0.1")
            after = len(statuses)
            wait_for(lambda: len(statuses) >= after + 10, DEADLINE, "requests after the upgrade")
        assert "created user" not in again and "piku setup:ssh" in again
        # Until pikud re-executes on SIGUSR2 the installer says to restart it; either
        # way the daemon goes on with the same pid.
        assert f"pikud (pid {daemon.pid})" in again and "SIGUSR2" in again, again
        assert daemon.poll() is None
        assert statuses and set(statuses) == {200}, statuses
        assert server.request("hello.example").body == b"flask i1"

        # --uninstall: pikud and its app stop; the installed files go; apps and data stay.
        gone = install("--uninstall")
        assert "stopping pikud" in gone, gone
        assert daemon.wait(DEADLINE) == 0, (base / "pikud.log").read_text()
        for path in (VENV, UNIT, ENABLED, SNIPPET, SUDOERS):
            assert not path.exists() and not path.is_symlink(), path
        for kept in ("apps/hello", "repos/hello", "data/hello", "logs/hello", "envs/hello"):
            assert (HOME / ".piku" / kept).exists(), kept
        assert (HOME / ".ssh" / "authorized_keys").exists()
        assert DEFAULT_SITE.is_symlink() == debian_site
        assert not app_processes(HOME / ".piku")
    finally:
        if daemon is not None and daemon.poll() is None:
            stop_session(daemon, signal.SIGTERM, DEADLINE)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def start_as_said(said: str, base: Path, server: NginxServer) -> subprocess.Popen[bytes]:
    """This test's nginx, then pikud started with the command the installer printed, set
    to reload that nginx (pikud.toml keeps the owner the installer gave it)."""
    start = next(line.strip() for line in said.splitlines() if "pikud serve" in line)
    server.start()
    settings = HOME / ".piku" / "pikud.toml"
    if not settings.exists():
        settings.touch(mode=0o644)
        shutil.chown(settings, "piku", "piku")
    settings.write_text(f"nginx_reload = {json.dumps(server.master.reload_command)}\n")
    with open(base / "pikud.log", "wb") as log:
        daemon = subprocess.Popen(shlex.split(start), stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    wait_for(lambda: daemon_answers(daemon, base), DEADLINE, "pikud's control socket")
    return daemon


def push_hello(said: str, base: Path, server: NginxServer, tmp_path: Path) -> None:
    """`git push` of a Flask app over a real sshd as piku@127.0.0.1, the remote as the
    installer printed it; it answers through nginx."""
    remote = re.search(r"git remote add piku (piku@127\.0\.0\.1:)APP", said)
    assert remote, said
    with sshd_on_loopback(base, "%h/.ssh/authorized_keys") as port:
        work = python_app(tmp_path / "hello", "i1", "wsgi: flask_app:app\n", extra={
            "requirements.txt": "flask\n", "flask_app.py": FLASK_APP,
            "ENV": ("NGINX_SERVER_NAME=hello.example\nNGINX_IPV4_ADDRESS=127.0.0.1\n"
                    f"DISABLE_IPV6=yes\nNGINX_HTTP_PORT={server.http_port}\n"
                    f"NGINX_HTTPS_PORT={server.https_port}\n")})
        git(work, "remote", "add", "piku", remote.group(1) + "hello")
        ssh = (f"ssh -i {base / 'client'} -p {port} -o IdentitiesOnly=yes -o BatchMode=yes "
               "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR")
        pushed = git(work, "push", "piku", "main", env=dict(os.environ, GIT_SSH_COMMAND=ssh),
                     check=False)
        assert pushed.returncode == 0, pushed.stderr + (base / "pikud.log").read_text()
    answer = server.wait_for("hello.example", "/", lambda r: r.status == 200)
    assert answer.body == b"flask i1", answer


def test_install_as_root_runs_each_app_as_its_own_user(fresh_machine: None,
                                                        tmp_path: Path) -> None:
    """--as-root: pikud as root (nginx's master too, its workers www-data, as on a real
    server); a push over ssh as piku builds and runs the app as piku-hello, served by nginx
    through the app's own socket folder. Running the installer again without --as-root
    stops it and gives piku all its files back: pikud as piku then finds hello."""
    base = Path(tempfile.mkdtemp(prefix="pki-", dir="/tmp"))
    base.chmod(0o755)
    (base / "include").mkdir()
    (base / "include" / "pikud.conf").symlink_to(SNIPPET)
    keygen(base / "client", "tester@laptop")
    server = NginxServer(base, root=HOME / ".piku", include=base / "include")
    ports = ["--http-port", str(server.http_port), "--https-port", str(server.https_port),
             "--listen", "127.0.0.1"]
    daemon: subprocess.Popen[bytes] | None = None
    try:
        said = install(*ports, "--key", str(base / "client.pub"), "--host", "127.0.0.1",
                       "--as-root")
        assert "User=root" in UNIT.read_text() and "pikud runs as root" in said, said
        settings = (HOME / ".piku" / "pikud.toml").stat()
        assert (settings.st_uid, settings.st_mode & 0o777) == (0, 0o644)
        daemon = start_as_said(said, base, server)
        assert proc_stat(daemon.pid) is not None and os.stat(f"/proc/{daemon.pid}").st_uid == 0
        push_hello(said, base, server, tmp_path)

        app_user = pwd.getpwnam("piku-hello")
        uids = {os.stat(f"/proc/{pid}").st_uid for pid in app_processes(HOME / ".piku")}
        assert uids == {app_user.pw_uid}, "the app's processes run as piku-hello"
        env_file = (HOME / ".piku" / "envs" / "hello" / "LIVE_ENV").stat()
        assert (env_file.st_uid, env_file.st_mode & 0o777) == (pwd.getpwnam("piku").pw_uid,
                                                                0o600)
        folder = HOME / ".piku" / "nginx" / "sockets" / "piku-hello"
        assert folder.stat().st_uid == app_user.pw_uid and any(folder.iterdir())

        back = install(*ports, "--host", "127.0.0.1")      # stops the root pikud first
        assert "User=piku" in UNIT.read_text() and "runs as piku again" in back, back
        assert f"stopping pikud (pid {daemon.pid})" in back and daemon.wait(DEADLINE) == 0
        assert "piku-hello" in back                         # the users to remove by hand
        piku = pwd.getpwnam("piku").pw_uid
        for path in ("data/hello", "pikud.toml", "pikud/state.json", "audit.log",
                     *(str(log.relative_to(HOME / ".piku"))
                       for log in (HOME / ".piku" / "logs" / "hello").glob("*.log"))):
            assert (HOME / ".piku" / path).stat().st_uid == piku, path
        assert (HOME / ".piku" / "nginx" / "sockets").stat().st_gid \
            == grp.getgrnam("www-data").gr_gid
        # pikud as piku, started as printed, reads what root wrote: hello is there.
        start = next(line.strip() for line in back.splitlines() if "pikud serve" in line)
        with open(base / "pikud.log", "ab") as log:
            daemon = subprocess.Popen(shlex.split(start), stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        wait_for(lambda: daemon_answers(daemon, base), DEADLINE, "pikud's control socket")
        apps = subprocess.run(shlex.split(start.replace("pikud serve", "piku apps")),
                              capture_output=True, text=True, timeout=DEADLINE)
        assert apps.returncode == 0 and "hello" in apps.stdout, apps.stdout + apps.stderr
    finally:
        if daemon is not None and daemon.poll() is None:
            stop_session(daemon, signal.SIGTERM, DEADLINE)
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def daemon_answers(daemon: subprocess.Popen[bytes], base: Path) -> bool:
    """pikud's control socket accepts connections (and pikud has not exited)."""
    assert daemon.poll() is None, (base / "pikud.log").read_text()
    with socket.socket(socket.AF_UNIX) as client:
        return client.connect_ex(str(HOME / ".piku" / "pikud.sock")) == 0
