"""No request is lost through the built-in router while the app's processes change."""

from __future__ import annotations

import http.client
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import Pikud, proc_stat, wait_for
from tests.e2e.apps import local_remote, push, python_app
from tests.e2e.test_nginx_kinds import static_site
from tests.e2e.test_push import ASGI_APP, WSGI_APP
from tests.net import free_port


class Load:
    """A steady, bounded stream of requests through the router, counting every outcome."""

    def __init__(self, port: int, host: str, interval: float = 0.02, limit: int = 3000) -> None:
        self.port, self.host, self.interval, self.limit = port, host, interval, limit
        self.ok: list[str] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.ok) + len(self.failed) < self.limit:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                conn.request("GET", "/", headers={"Host": self.host})
                response = conn.getresponse()
                body = response.read().decode()
                (self.ok if response.status == 200 else self.failed).append(
                    body if response.status == 200 else f"{response.status} {body}")
            except OSError as exc:
                self.failed.append(repr(exc))
            finally:
                conn.close()
            time.sleep(self.interval)

    def __enter__(self) -> Load:
        self._thread.start()
        wait_for(lambda: self.ok or self.failed, 10, "the first request")
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)
        self._stop.set()
        self._thread.join(30)


@contextmanager
def steady(pikud: Pikud, app: str) -> Iterator[Load]:
    with Load(pikud.http_port, app) as load:
        yield load
    assert load.failed == [], load.failed[:5]
    assert len(load.ok) >= 10


def test_restart_redeploy_config_scale_and_a_failed_deploy_lose_no_request(
        pikud: Pikud, tmp_path: Path) -> None:
    work = python_app(tmp_path / "steady", "v1")
    local_remote(work, "steady")
    push(work, pikud.env)
    with steady(pikud, "steady") as load:
        assert pikud.cli("restart", "steady").returncode == 0
    assert set(load.ok) == {"v1 tinypkg=42"}

    python_app(work, "v2")
    with steady(pikud, "steady") as load:
        push(work, pikud.env)
    assert load.ok[0] == "v1 tinypkg=42" and load.ok[-1] == "v2 tinypkg=42"
    # The push returned once traffic moved; the old generation drained after it, and
    # the app's log says so.
    wait_for(lambda: "retired: steady:web.1 (the previous generation, drained and stopped in"
             in pikud.log_text("steady", "pikud"), 30, "the old generation's retirement")

    with steady(pikud, "steady"):
        assert pikud.cli("config:set", "steady", "GREETING=hi").returncode == 0
    with steady(pikud, "steady"):
        assert pikud.cli("ps:scale", "steady", "web=3").returncode == 0
    assert len([p for p in pikud.processes("steady") if p["state"] == "RUNNING"]) == 3
    with steady(pikud, "steady"):
        assert pikud.cli("ps:scale", "steady", "web=1").returncode == 0

    python_app(work, "never", extra={"Procfile": "web: sleep 300\n",
                                     "ENV": "PIKU_START_SECS=0.3\nPIKU_READY_TIMEOUT=1\n"})
    with steady(pikud, "steady") as load:
        assert push(work, pikud.env, check=False).returncode != 0
    assert set(load.ok) == {"v2 tinypkg=42"}

    with steady(pikud, "steady") as load:
        assert pikud.cli("rollback", "steady").returncode == 0
    assert load.ok[0] == "v2 tinypkg=42" and load.ok[-1] == "v1 tinypkg=42"


def test_app_servers_lose_no_request_either(pikud: Pikud, tmp_path: Path) -> None:
    """wsgi and asgi on granian (binds its port), on gunicorn and uvicorn (the daemon's socket)."""
    for app, procfile, env, body in (
            ("granwsgi", "wsgi: wsgi_app:application\n", "", "wsgi"),
            ("gunwsgi", "wsgi: wsgi_app:application\n", "PIKU_WSGI_SERVER=gunicorn\n", "wsgi"),
            ("granasgi", "asgi: asgi_app:app\n", "", "asgi"),
            ("uviasgi", "asgi: asgi_app:app\n", "PIKU_ASGI_SERVER=uvicorn\n", "asgi")):
        settings = "PIKU_START_SECS=0.3\nPIKU_STOP_TIMEOUT=3\nUWSGI_PROCESSES=1\n" + env
        work = python_app(tmp_path / app, "g1", procfile, extra={
            "wsgi_app.py": WSGI_APP, "asgi_app.py": ASGI_APP, "ENV": settings})
        local_remote(work, app)
        push(work, pikud.env)
        python_app(work, "g2", procfile, extra={"ENV": settings})
        with steady(pikud, app) as load:
            assert pikud.cli("restart", app).returncode == 0
            push(work, pikud.env)
            assert pikud.cli("config:set", app, "GREETING=hi").returncode == 0
            assert pikud.cli("ps:scale", app, f"{procfile[:4]}=2").returncode == 0
            assert pikud.cli("rollback", app).returncode == 0
        assert load.ok[0].startswith(f"{body} g1") and load.ok[-1].startswith(f"{body} g1"), app
        assert any(answer.startswith(f"{body} g2") for answer in load.ok), app


def test_routes_by_host_and_path_prefix_and_serves_static(pikud: Pikud, tmp_path: Path) -> None:
    work = python_app(tmp_path / "site", "s1", extra={
        "ENV": "PIKU_START_SECS=0.3\nNGINX_SERVER_NAME=site.example\n"
               "NGINX_STATIC_PATHS=/assets:public\n", "public/hello.txt": "static hello\n"})
    local_remote(work, "site")
    push(work, pikud.env)
    port = pikud.http_port

    def get(path: str, host: str) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("GET", path, headers={"Host": host})
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    assert get("/", "site.example") == (200, "s1 tinypkg=42")
    assert get("/", "site.localhost:8080") == (200, "s1 tinypkg=42")
    assert get("/_/site/", "127.0.0.1") == (200, "s1 tinypkg=42")
    assert get("/assets/hello.txt", "site.example") == (200, "static hello\n")
    assert get("/assets/../ENV", "site.example")[0] == 404
    assert get("/", "nobody.example")[0] == 404
    pikud.api("POST", "/apps/site/stop")
    assert get("/", "site.example")[0] == 503


def test_serve_http_flag_and_a_static_only_site_through_the_router(
        pikud_factory: Callable[..., Pikud], tmp_path: Path) -> None:
    """`pikud serve --http` wins over PIKU_HTTP_ADDRESS; a `static:` entry needs no process."""
    address = f"127.0.0.1:{free_port()}"
    daemon = pikud_factory("--http", address)
    assert daemon.api("GET", "/status")["http"] == address
    work = static_site(tmp_path / "pages", "")
    local_remote(work, "pages")
    push(work, daemon.env)
    assert daemon.processes("pages") == []
    assert daemon.get("pages") == (200, "<h1>static s1</h1>\n")
    assert daemon.get("pages", "/index.html") == (200, "<h1>static s1</h1>\n")


def test_orphans_are_reaped_after_a_build_under_uvloop(pikud: Pikud, tmp_path: Path) -> None:
    """A build probes tools with subprocesses; none of them may take SIGCHLD from pikud."""
    work = python_app(tmp_path / "orph", "o1", procfile="web: python3 server.py\n"
                      "spawner: while true; do (sleep 0.1 & echo $! >> orphans); sleep 0.3; "
                      "done\n")
    local_remote(work, "orph")
    push(work, pikud.env)
    born = pikud.root / "apps/orph/orphans"

    def reaped() -> bool:
        """Several orphans were born and have exited; reaped, each /proc entry is gone."""
        pids = born.read_text().split() if born.exists() else []
        return len(pids) >= 4 and not any(os.path.exists(f"/proc/{pid}") for pid in pids[:3])

    wait_for(reaped, 10, "three orphans born and reaped")
    assert pikud.proc is not None
    zombies = [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()
               and (fields := proc_stat(entry.name)) is not None
               and fields[0] == "Z" and int(fields[1]) == pikud.proc.pid]
    assert zombies == []
