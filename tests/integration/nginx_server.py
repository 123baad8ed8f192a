"""A real nginx master serving a pikud root's sites, and loopback HTTP backends for it.

Shared by the nginx, acme and cloudflare integration tests and the e2e tests
that push through nginx; their fixtures are in tests/integration/conftest.py.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

from pikud.paths import Paths
from pikud.proxy.nginx import Nginx
from pikud.proxy.site import NginxSite, site_from_env
from tests.conftest import Pikud, app_processes
from tests.net import Answer, HttpServer
from tests.nginx_master import AS_ROOT, DEADLINE, NGINX, NginxMaster
from tests.waiting import wait_for


# --- backends: a tiny HTTP server that says who it is and what it received -------
class Backend:
    """A loopback HTTP server in this process (tests/net.py) that answers with its
    name, the path and the headers it received, as JSON."""

    def __init__(self, name: str, unix: Path | None = None) -> None:
        self.name = name
        self.server = HttpServer(self.answer, unix)
        self.upstream = self.server.upstream

    def answer(self, request: BaseHTTPRequestHandler) -> Answer:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = json.dumps({"name": self.name, "path": request.path, "headers": headers})
        return 200, "application/json", body.encode()


# --- the nginx master -------------------------------------------------------------
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class NginxServer:
    """One real nginx master (tests/nginx_master.py) serving ``root``'s nginx/*.conf.

    By default ``root`` is a new one in ``base``; test_install passes the piku
    user's, the installed nginx file's folder as ``include`` and ``user="piku"``.
    """

    def __init__(self, base: Path, root: Path | None = None, include: Path | None = None,
                 user: str | None = None) -> None:
        self.base = base
        self.root = base / "root" if root is None else root
        self.paths = Paths(self.root)
        if root is None:
            self.paths.create()
        self.master = NginxMaster(base / "prefix", include or self.paths.nginx(), user=user)
        self.prefix = self.master.prefix
        self.conf = self.master.conf
        self.http_port = self.master.http_port
        self.https_port = self.master.https_port

    @property
    def proc(self) -> subprocess.Popen[bytes] | None:
        return self.master.proc

    def start(self) -> None:
        self.master.start(DEADLINE)

    def output(self) -> str:
        return self.master.output()

    def group(self) -> set[int]:
        """Live processes of the master's session: the master and its workers."""
        return set(self.master.processes())

    def wait_settled(self) -> None:
        """Until the workers a reload replaced have exited (they are titled "nginx: worker
        process is shutting down"). An old worker that takes a new connection while it
        shuts down may close it unanswered, as nginx closes idle connections on its way out."""
        wait_for(lambda: not any("shutting down" in _title(pid) for pid in self.group()),
                 DEADLINE, "nginx's replaced workers to exit")

    def stop(self) -> None:
        """Stop the master; fails if it had no processes or one had to be killed."""
        if self.proc is None:
            return
        group = self.group()
        left = self.master.stop(DEADLINE)
        assert group, "nginx had no processes"
        assert not left, f"nginx processes left behind: {left}"

    def nginx(self, reload_command: list[str] | None = None) -> Nginx:
        """The pikud side: tests with this nginx binary, reloads this master."""
        reload = self.master.reload_command if reload_command is None else reload_command
        return Nginx(self.paths, [NGINX], reload, preamble=self.master.preamble,
                     timeout=DEADLINE)

    def site(self, app: str, env: dict[str, str], upstreams: tuple[str, ...] = (),
             app_dir: Path | None = None, **kwargs: Any) -> NginxSite:
        """The app's site on this server's loopback ports."""
        ports = {"NGINX_IPV4_ADDRESS": "127.0.0.1", "DISABLE_IPV6": "yes",
                 "NGINX_HTTP_PORT": str(self.http_port),
                 "NGINX_HTTPS_PORT": str(self.https_port)}
        site = site_from_env(app, ports | env, upstreams, self.paths,
                             app_dir or self.app_dir(app), **kwargs)
        assert site is not None
        return site

    def app_dir(self, app: str) -> Path:
        folder = self.paths.app(app)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def request(self, host: str, path: str = "/", *, https: bool = False,
                headers: dict[str, str] | None = None) -> Response:
        connection: http.client.HTTPConnection
        if https:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            connection = http.client.HTTPSConnection("127.0.0.1", self.https_port,
                                                     timeout=DEADLINE, context=context)
        else:
            connection = http.client.HTTPConnection("127.0.0.1", self.http_port,
                                                    timeout=DEADLINE)
        try:
            connection.request("GET", path, headers={"Host": host, **(headers or {})})
            response = connection.getresponse()
            return Response(response.status, {k.lower(): v for k, v in response.getheaders()},
                            response.read())
        finally:
            connection.close()

    def wait_for(self, host: str, path: str, check: Callable[[Response], bool], *,
                 https: bool = False, what: str = "") -> Response:
        """A reload is asynchronous: poll until the new workers answer as expected."""
        last: list[Response] = []

        def attempt() -> bool:
            try:
                last[:] = [self.request(host, path, https=https)]
            except OSError:             # the new listening socket is not there yet
                return False
            return check(last[0])
        wait_for(attempt, DEADLINE, what or f"{host}{path}")
        return last[0]


def _title(pid: int) -> str:
    """A process's title (nginx sets it over its argv), or "" once it is gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@contextlib.contextmanager
def fronted_by_nginx(log_dir: Path, settings: Callable[[NginxServer], str] = lambda server: "",
                     ) -> Iterator[tuple[NginxServer, Pikud]]:
    """A real nginx on loopback ports and a real pikud whose sites it tests and serves.

    ``settings`` adds lines to the daemon's pikud.toml. Everything started is
    stopped, and no app process may outlive it.
    """
    base = Path(tempfile.mkdtemp(prefix="pkf-", dir="/tmp"))
    base.chmod(0o755)
    server = NginxServer(base)
    if AS_ROOT:     # workers run as www-data: the installer's `piku setup --fix` lets them in
        fixed = subprocess.run([sys.executable, "-m", "pikud.cli", "setup", "--fix"],
                               env=dict(os.environ, PIKU_ROOT=str(server.root)),
                               capture_output=True, text=True, timeout=60)
        assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    daemon = Pikud(server.root, log_dir / "pikud.log")
    (server.root / "pikud.toml").write_text(
        f"nginx_test = {json.dumps([NGINX])}\n"
        f"nginx_reload = {json.dumps(server.master.reload_command)}\n"
        f"nginx_preamble = {json.dumps(list(server.master.preamble))}\n" + settings(server))
    try:
        server.start()
        daemon.start(extra_env={"PIKU_PROXY": "nginx"})
        yield server, daemon
    finally:
        if daemon.proc is not None:
            assert daemon.stop() == 0, daemon.output()
        server.stop()
        left = app_processes(server.root)
        shutil.rmtree(base, ignore_errors=True)
        assert not left, left
