"""A throwaway nginx master on loopback ports (stdlib only).

The nginx tests (``NginxServer`` in tests/integration/test_nginx.py) and the
WSGI benchmark (bench/wsgi.py) both start real nginx masters the same way, so
they share this one copy. The benchmark runs in bench/.venv, which has no
pytest, hence no pytest import here (like tests/waiting.py).

The master runs in the foreground (``daemon off;``) in a session of its own,
with its own prefix (pid, logs, temp folders), so nothing touches the system's
nginx; its http {} includes ``include``/*.conf, as contrib/nginx-pikud.conf
does. Run as root, its workers are www-data, as on Debian. A health server
answering 204 tells when it listens, before any site exists. Stopping sends
SIGQUIT (graceful), waits a bounded time, and SIGKILLs what is left of the
session, returning those pids so that the caller can fail or report. Given a
``user`` (test_install's piku), the master runs as that user and owns its
prefix, so that a pikud running as that user can reload it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tests.net import free_port
from tests.processes import in_session, stop_session
from tests.waiting import wait_for

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
AS_ROOT = os.geteuid() == 0
DEADLINE = 10.0
TEMP_KINDS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class NginxMaster:
    """One nginx master with its own ``prefix``; http {} includes ``include``/*.conf.

    The access log is ``prefix``/access.log, in nginx's default format unless
    ``log_format`` is given (e.g. ``'$msec $status'``); ``log_options`` follow it
    on the ``access_log`` line (e.g. ``buffer=256k flush=1s``). The health server
    logs nothing. What nginx prints goes to ``prefix``/output.log (``output()``).
    """

    def __init__(self, prefix: Path, include: Path, *, worker_connections: int = 256,
                 log_format: str | None = None, log_options: str = "",
                 user: str | None = None) -> None:
        self.prefix = prefix
        self.include = include
        self.user = user
        self.conf = prefix / "nginx.conf"
        self.access_log = prefix / "access.log"
        self.worker_connections = worker_connections
        self.log_format = log_format
        self.log_options = log_options
        self.http_port = free_port()
        self.https_port = free_port()
        self.health_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def preamble(self) -> tuple[str, ...]:
        """Main-context lines before events {}: Debian's worker user when run as root."""
        return ("user www-data;",) if AS_ROOT and self.user is None else ()

    @property
    def reload_command(self) -> list[str]:
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-s", "reload"]

    def render(self) -> str:
        """The text of nginx.conf."""
        temp = "".join(f"    {kind}_temp_path {self.prefix}/tmp/{kind};\n" for kind in TEMP_KINDS)
        log = f"    access_log {self.access_log}"
        if self.log_format is not None:
            log = f"    log_format custom '{self.log_format}';\n{log} custom"
        return ("".join(line + "\n" for line in self.preamble)
                + f"worker_processes 1;\npid {self.prefix}/nginx.pid;\n"
                f"error_log {self.prefix}/error.log notice;\n"
                f"events {{ worker_connections {self.worker_connections}; }}\n"
                "http {\n    include /etc/nginx/mime.types;\n"
                "    default_type application/octet-stream;\n"
                f"{log}{' ' + self.log_options if self.log_options else ''};\n{temp}"
                f"    server {{ listen 127.0.0.1:{self.health_port}; access_log off; "
                "return 204; }\n"
                f"    include {self.include}/*.conf;\n}}\n")

    def start(self, timeout: float = DEADLINE) -> None:
        """Write nginx.conf, start the master, and return once the health port answers."""
        (self.prefix / "tmp").mkdir(parents=True)
        self.conf.write_text(self.render())
        if self.user is not None:
            for path in (self.prefix, self.prefix / "tmp"):
                shutil.chown(path, self.user, self.user)
        with open(self.prefix / "output.log", "wb") as out:
            self.proc = subprocess.Popen(
                [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-e", "stderr",
                 "-g", "daemon off;"], stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, user=self.user,
                group=self.user, extra_groups=[] if self.user is not None else None)
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or listening(self.health_port), timeout,
                 "nginx listening")
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited {proc.returncode}: {self.output()}")

    def output(self) -> str:
        """What nginx printed (startup errors, with ``-e stderr``)."""
        try:
            return (self.prefix / "output.log").read_text(errors="replace")
        except OSError:
            return ""

    def processes(self) -> list[int]:
        """Live processes of the master's session: the master and its workers."""
        return in_session(self.proc.pid) if self.proc is not None else []

    def stop(self, timeout: float = DEADLINE) -> list[int]:
        """SIGQUIT, wait up to ``timeout``, SIGKILL what is left of the session.
        Returns the pids that had to be killed (none when nginx stopped cleanly)."""
        if self.proc is None:
            return []
        killed = stop_session(self.proc, signal.SIGQUIT, timeout, linger=timeout)
        self.proc = None
        return killed
