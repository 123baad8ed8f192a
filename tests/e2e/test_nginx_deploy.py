"""git push to a daemon fronted by a real nginx: sites go live only when the app is ready."""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Pikud, app_processes
from tests.e2e.apps import git, local_remote, python_app
from tests.integration.test_nginx import AS_ROOT, NGINX, NginxServer

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


@pytest.fixture
def fronted(tmp_path: Path) -> Iterator[tuple[NginxServer, Pikud]]:
    """A real nginx on loopback ports and a pikud whose sites it serves."""
    base = Path(tempfile.mkdtemp(prefix="pkf-", dir="/tmp"))
    base.chmod(0o755)
    server = NginxServer(base)
    daemon = Pikud(server.root, tmp_path / "pikud.log")
    (server.root / "pikud.toml").write_text(
        f"nginx_test = {json.dumps([NGINX])}\n"
        f"nginx_reload = {json.dumps([NGINX, '-p', str(server.prefix), '-c', str(server.conf), '-s', 'reload'])}\n"
        f"nginx_preamble = {json.dumps(['user www-data;'] if AS_ROOT else [])}\n")
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


def site_env(server: NginxServer, extra: str = "") -> str:
    return ("PIKU_START_SECS=0.3\nNGINX_SERVER_NAME=shop.example\nNGINX_IPV4_ADDRESS=127.0.0.1\n"
            f"DISABLE_IPV6=yes\nNGINX_HTTP_PORT={server.http_port}\n"
            f"NGINX_HTTPS_PORT={server.https_port}\n" + extra)


def test_push_goes_live_through_nginx_without_dropping_a_request(
        fronted: tuple[NginxServer, Pikud], tmp_path: Path) -> None:
    server, daemon = fronted
    work = python_app(tmp_path / "shop", "n1", extra={"ENV": site_env(server)})
    local_remote(work, "shop")
    git(work, "push", "piku", "main", env=daemon.env)
    first = server.wait_for("shop.example", "/", lambda r: r.status == 200)
    assert first.body == b"n1 tinypkg=42" and first.headers["x-deployed-by"] == "pikud"
    assert server.request("shop.example", https=True).body == b"n1 tinypkg=42"

    results: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(results) < 2000:
            try:
                results.append(server.request("shop.example").status)
            except (OSError, http.client.HTTPException):
                results.append(-1)
            time.sleep(0.02)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        python_app(work, "n2", extra={"ENV": site_env(server)})
        git(work, "push", "piku", "main", env=daemon.env)
        assert daemon.cli("restart", "shop").returncode == 0
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join(30)
    assert results and set(results) == {200}, [r for r in results if r != 200][:5]
    assert server.request("shop.example").body == b"n2 tinypkg=42"

    # A broken include file: nginx refuses the config, the push is rejected, n2 keeps serving.
    python_app(work, "n3", extra={"ENV": site_env(server, "NGINX_INCLUDE_FILE=extra.conf\n"),
                                  "extra.conf": "this is not nginx;\n"})
    rejected = git(work, "push", "piku", "main", env=daemon.env, check=False)
    assert rejected.returncode != 0 and "nginx" in rejected.stderr, rejected.stderr
    assert server.request("shop.example").body == b"n2 tinypkg=42"

    # An injection attempt is refused before anything is written.
    before = (server.root / "nginx/shop.conf").read_text()
    python_app(work, "n4", extra={"ENV": site_env(server).replace(
        "shop.example", "shop.example;return 200 pwned")})
    injected = git(work, "push", "piku", "main", env=daemon.env, check=False)
    assert injected.returncode != 0 and "NGINX_SERVER_NAME" in injected.stderr
    assert (server.root / "nginx/shop.conf").read_text() == before
    assert server.request("shop.example").body == b"n2 tinypkg=42"
