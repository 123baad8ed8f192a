"""Every Procfile kind that serves HTTP, pushed with git and answering through a real nginx.

A Flask app (wsgi, on granian), an ASGI app, a plain Python `web` process, a
static site with no process at all, and a `web` app that scales to zero:
each has its own server name on the one nginx the fixture started.
"""

from __future__ import annotations

import grp
import os
import stat
import time
from pathlib import Path

import pytest

from tests.conftest import Pikud
from tests.e2e.apps import committed, local_remote, push, python_app
from tests.e2e.test_nginx_deploy import site_env
from tests.e2e.test_push import ASGI_APP, FD_APP
from tests.integration.nginx_server import NginxServer
from tests.net import connects_as
from tests.nginx_master import AS_ROOT

FLASK_APP = '''\
from flask import Flask

app = Flask(__name__)


@app.get("/")
def index():
    return "flask " + open("VERSION").read().strip()
'''


def named(server: NginxServer, app: str, extra: str = "") -> str:
    return site_env(server, extra).replace("shop.example", f"{app}.example")


def static_site(work: Path, env: str) -> Path:
    """A repository with only a `static:` entry and its files: no runtime, no process."""
    return committed(work, {"public/index.html": "<h1>static s1</h1>\n",
                            "Procfile": "static: /:public\n", "ENV": env}, "static")


def test_every_serving_kind_answers_through_nginx(
        fronted: tuple[NginxServer, Pikud], tmp_path: Path) -> None:
    server, daemon = fronted
    flask = python_app(tmp_path / "flask", "f1", "wsgi: flask_app:app\n", extra={
        "requirements.txt": "flask\n", "flask_app.py": FLASK_APP,
        "ENV": named(server, "flask")})
    asgi = python_app(tmp_path / "asgi", "a1", "asgi: asgi_app:app\n", extra={
        "asgi_app.py": ASGI_APP, "ENV": named(server, "asgi")})
    web = python_app(tmp_path / "web", "w1", extra={"ENV": named(server, "web")})
    site = static_site(tmp_path / "static", named(server, "static"))
    for app, work in (("flask", flask), ("asgi", asgi), ("web", web), ("static", site)):
        local_remote(work, app)
        push(work, daemon.env)

    expected = {"flask": b"flask f1", "asgi": b"asgi a1", "web": b"w1 tinypkg=42",
                "static": b"<h1>static s1</h1>\n"}
    for app, body in expected.items():
        # A reload is asynchronous: until the new workers run, the first site answers all.
        server.wait_for(f"{app}.example", "/",
                        lambda r, body=body: (r.status, r.body) == (200, body))
        assert server.request(f"{app}.example", https=True).body == body
    assert daemon.processes("static") == []              # nginx serves it alone

    # wsgi and asgi serve nginx (its workers, as www-data when root) through unix sockets
    # no other local user can reach; a `web` process binds a loopback port anyone can.
    [web_proc] = daemon.processes("web")
    for app in ("flask", "asgi"):
        [proc] = daemon.processes(app)
        assert proc["port"] is None and proc["socket"], proc
        conf = (daemon.root / "nginx" / f"{app}.conf").read_text()
        assert f"server unix:{proc['socket']}" in conf
        if AS_ROOT:
            assert connects_as("nobody", Path(proc["socket"])) == "EACCES"
    if AS_ROOT:
        assert connects_as("nobody", web_proc["port"]) == "ok"


@pytest.mark.skipif(not AS_ROOT, reason="pikud gives nginx's group the folder only as root")
def test_pikud_as_root_gives_nginx_the_sockets_folder_itself(
        fronted: tuple[NginxServer, Pikud], tmp_path: Path) -> None:
    """An install upgraded without `piku setup --fix`: the sockets folder is pikud's own,
    0700. pikud, as root, hands it to nginx's group itself; the app serves on its socket."""
    server, daemon = fronted
    sockets = daemon.root / "nginx" / "sockets"
    os.chown(sockets, 0, 0)
    sockets.chmod(0o700)
    asgi = python_app(tmp_path / "asgi", "a1", "asgi: asgi_app:app\n", extra={
        "asgi_app.py": ASGI_APP, "ENV": named(server, "asgi")})
    local_remote(asgi, "asgi")
    pushed = push(asgi, daemon.env)
    server.wait_for("asgi.example", "/", lambda r: (r.status, r.body) == (200, b"asgi a1"))
    assert "Warning" not in pushed.stderr, pushed.stderr
    folder = sockets.stat()
    assert stat.S_IMODE(folder.st_mode) == 0o2750
    assert grp.getgrgid(folder.st_gid).gr_name == "www-data"
    [proc] = daemon.processes("asgi")
    assert proc["socket"] and connects_as("nobody", Path(proc["socket"])) == "EACCES"


def test_the_first_request_after_a_sleep_succeeds_through_nginx(
        fronted: tuple[NginxServer, Pikud], tmp_path: Path) -> None:
    server, daemon = fronted
    work = python_app(tmp_path / "nap", "z1", "web: python3 fd_app.py\n", extra={
        "fd_app.py": FD_APP,
        "ENV": named(server, "nap", "PIKU_LISTEN_FDS=true\nPIKU_IDLE_TIMEOUT=1\n")})
    local_remote(work, "nap")
    push(work, daemon.env)
    server.wait_for("nap.example", "/", lambda r: (r.status, r.body) == (200, b"fd z1"))
    daemon.wait_state("nap", "nap:web.1", "IDLE", timeout=20)
    for _ in range(2):
        started = time.monotonic()
        assert server.request("nap.example").body == b"fd z1"      # no 502 while it boots
        assert time.monotonic() - started < 10
        daemon.wait_state("nap", "nap:web.1", "IDLE", timeout=20)
