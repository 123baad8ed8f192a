"""wsgi and asgi slots on unix sockets under nginx/sockets, with a real daemon and real
app servers (granian binds its socket, gunicorn is handed the daemon's); requests go
through the built-in router."""

from __future__ import annotations

import os
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FAST, Pikud, wait_for
from .test_reexec import Load, reexec

WSGI = '''\
import os

def application(environ, start_response):
    body = f"{os.environ['GREETING']} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
'''
SETTINGS = FAST + "UWSGI_PROCESSES=1\nGREETING=hello\n"


@pytest.fixture
def served(pikud_factory: Callable[..., Pikud], app_servers: Path) -> Pikud:
    """A daemon whose apps find granian, gunicorn and uvicorn on PATH."""
    return pikud_factory(extra_env={"PATH": f"{app_servers}:{os.environ['PATH']}"})


def deploy(pikud: Pikud, name: str, env: str = "") -> dict[str, Any]:
    app = pikud.add_app(name, "wsgi: hello:application\n", SETTINGS + env)
    (app / "hello.py").write_text(WSGI)
    pikud.api("POST", f"/apps/{name}/deploy")
    return pikud.wait_state(name, f"{name}:wsgi.1", "RUNNING")


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_granian_and_gunicorn_serve_on_unix_sockets_that_move_with_each_generation(
        served: Pikud) -> None:
    sockets = served.root / "nginx" / "sockets"
    for name, env in (("gran", ""), ("gun", "PIKU_WSGI_SERVER=gunicorn\n")):
        proc = deploy(served, name, env)
        path = proc["socket"]
        assert proc["port"] is None and Path(path).parent == sockets
        assert Path(path).name.startswith(f"{name}.wsgi.1.") and path.endswith(".sock")
        assert mode(path) == 0o660 and mode(str(sockets)) == 0o700
        assert served.get(name, "/x") == (200, "hello /x")
        environ = Path(f"/proc/{proc['pid']}/environ").read_bytes().split(b"\0")
        assert f"PIKU_SOCKET={path}".encode() in environ
        assert not any(word.startswith(b"PORT=") for word in environ)

        # A new generation serves on new paths; the old one's file goes once it retired.
        served.cli("config:set", name, "GREETING=again", check=True)
        moved = served.process(name, f"{name}:wsgi.1")
        assert moved["socket"] != path and served.get(name) == (200, "again /")
        wait_for(lambda old=path: not os.path.exists(old), 15,
                 "the old generation's socket to go")
        assert mode(moved["socket"]) == 0o660

    # granian killed outright leaves its file; the daemon clears it, and the respawn binds.
    gran = served.process("gran", "gran:wsgi.1")
    os.kill(gran["pid"], signal.SIGKILL)
    wait_for(lambda: served.process("gran", "gran:wsgi.1")["pid"] not in (None, gran["pid"])
             and served.process("gran", "gran:wsgi.1")["state"] == "RUNNING", 15,
             "granian to be back")
    assert served.get("gran") == (200, "again /")

    # PIKU_UPSTREAM=tcp: a loopback port again, and the socket is gone.
    served.cli("config:set", "gran", "PIKU_UPSTREAM=tcp", check=True)
    tcp = served.process("gran", "gran:wsgi.1")
    assert tcp["port"] and tcp["socket"] is None and served.get("gran") == (200, "again /")
    bad = served.cli("config:set", "gran", "PIKU_UPSTREAM=udp")
    assert bad.returncode != 0 and "PIKU_UPSTREAM: expected unix or tcp, got 'udp'" in bad.stderr

    for name in ("gran", "gun"):
        served.cli("destroy", name, check=True)
    wait_for(lambda: not any(sockets.iterdir()), 15, "no socket to be left")


def test_an_app_on_a_unix_socket_sleeps_and_a_request_wakes_it(served: Pikud) -> None:
    proc = deploy(served, "nap", "PIKU_WSGI_SERVER=gunicorn\nPIKU_IDLE_TIMEOUT=1\n")
    asleep = served.wait_state("nap", "nap:wsgi.1", "IDLE", timeout=15)
    assert asleep["socket"] == proc["socket"] and os.path.exists(proc["socket"])
    assert served.get("nap", "/up") == (200, "hello /up")        # waited in the backlog
    served.wait_state("nap", "nap:wsgi.1", "RUNNING")
    served.wait_state("nap", "nap:wsgi.1", "IDLE", timeout=15)


def test_apps_on_unix_sockets_lose_no_request_across_a_reexec(served: Pikud) -> None:
    """While the new image loads, the re-exec bridge routes to the same sockets, which the
    slots keep serving; the new image adopts them with their sockets."""
    before = {name: deploy(served, name, env)["pid"]
              for name, env in (("gran", ""), ("gun", "PIKU_WSGI_SERVER=gunicorn\n"))}
    sockets = {name: served.process(name, f"{name}:wsgi.1")["socket"] for name in before}
    gran, gun = (Load(served.http_port, f"{name}.localhost") for name in before)
    with gran.running(), gun.running():
        wait_for(lambda: gran.answered() > 20 and gun.answered() > 20, 15, "the load to start")
        reexec(served, lambda: min(gran.answered(), gun.answered()))
    assert (gran.failed, gun.failed) == (0, 0), gran.errors[:3] + gun.errors[:3]
    after = {name: served.process(name, f"{name}:wsgi.1") for name in before}
    assert {name: proc["pid"] for name, proc in after.items()} == before
    assert {name: proc["socket"] for name, proc in after.items()} == sockets
    assert served.get("gun", "/after") == (200, "hello /after")
    assert "re-exec bridge: stopped after" in served.output()
