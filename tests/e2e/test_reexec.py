"""SIGUSR2 with real pushes and a real nginx: no request fails, no push is cut in half."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tests.conftest import Pikud, wait_for
from tests.e2e.apps import committed, local_remote, push
from tests.e2e.test_nginx_deploy import site_env, statuses_of
from tests.integration.nginx_server import NginxServer
from tests.integration.test_reexec import PID_SERVER, Load, pids, reexec


def plain_app(work: Path, version: str, env: str = "") -> Path:
    """A web app with no runtime to build (a push takes seconds): it answers its version."""
    server = PID_SERVER.replace("str(os.getpid()).encode()", f"b{version!r}")
    return committed(work, {
        "Procfile": "web: exec python3 server.py\n", "server.py": server,
        "ENV": "PIKU_START_SECS=0.3\nPIKU_STOP_TIMEOUT=3\nPIKU_LISTEN_FDS=true\n" + env,
    }, f"version {version}")


def test_a_push_during_a_reexec_finishes_and_the_new_image_serves_it(
        pikud: Pikud, tmp_path: Path) -> None:
    work = plain_app(tmp_path / "shop", "v1")
    local_remote(work, "shop")
    push(work, pikud.env)
    wait_for(lambda: pikud.get("shop") == (200, "v1"), 15, "v1")
    plain_app(work, "v2")
    with Load(pikud.http_port, "shop.localhost").running() as load:
        pushed: list[int] = []
        pushing = threading.Thread(target=lambda: pushed.append(
            push(work, pikud.env, check=False).returncode))
        pushing.start()
        wait_for(lambda: pikud.log_text("shop", "pikud").count("deploying") >= 2, 30,
                 "the second push to reach pikud")
        reexec(pikud, load.answered)
        pushing.join(60)
    assert pushed == [0]
    assert load.failed == 0, load.errors[:5]
    assert pikud.get("shop") == (200, "v2")
    log = pikud.output()        # the re-exec waited for the push it came in the middle of
    assert (log.index("received SIGUSR2") < log.index("release 2 is live")
            < log.index("re-exec: pikud"))


@pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
def test_sigusr2_twice_through_nginx_loses_no_request(
        fronted: tuple[NginxServer, Pikud], tmp_path: Path) -> None:
    server, daemon = fronted
    app = daemon.add_app("shop", "web: exec python3 server.py\n",
                         site_env(server, "PIKU_LISTEN_FDS=true\nPIKU_STOP_TIMEOUT=3\n"))
    (app / "server.py").write_text(PID_SERVER)
    daemon.api("POST", "/apps/shop/deploy")
    server.wait_for("shop.example", "/", lambda r: r.status == 200)
    before = pids(daemon, "shop")
    with statuses_of(server, "shop.example") as statuses:
        wait_for(lambda: len(statuses) > 10, 15, "requests through nginx")
        reexec(daemon, lambda: len(statuses))
        reexec(daemon, lambda: len(statuses))
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]
    assert pids(daemon, "shop") == before
    assert daemon.output().count("re-exec: pikud") == 4        # two execs, two adoptions
