"""git push to a daemon fronted by a real nginx: sites go live only when the app is ready."""

from __future__ import annotations

import http.client
import json
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import Pikud
from tests.e2e.apps import WEB_APP, local_remote, push, python_app
from tests.integration.nginx_server import NginxServer, fronted_by_nginx
from tests.integration.test_acme import STAND_IN, served_certificate, subject_and_issuer
from tests.integration.test_footprint import SSL_ITSELF, mapped
from tests.nginx_master import DEADLINE
from tests.waiting import wait_for

pytestmark = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")


def site_env(server: NginxServer, extra: str = "") -> str:
    return ("PIKU_START_SECS=0.3\nNGINX_SERVER_NAME=shop.example\nNGINX_IPV4_ADDRESS=127.0.0.1\n"
            f"DISABLE_IPV6=yes\nNGINX_HTTP_PORT={server.http_port}\n"
            f"NGINX_HTTPS_PORT={server.https_port}\n" + extra)


@contextmanager
def statuses_of(server: NginxServer, host: str, limit: int = 4000) -> Iterator[list[int]]:
    """A steady, bounded stream of requests to ``host`` through nginx while the block runs:
    the status of each (-1: no answer at all)."""
    statuses: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set() and len(statuses) < limit:
            try:
                statuses.append(server.request(host).status)
            except (OSError, http.client.HTTPException):
                statuses.append(-1)
            time.sleep(0.02)

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        yield statuses
    finally:
        stop.set()
        thread.join(30)


def test_push_goes_live_through_nginx_without_dropping_a_request(
        fronted: tuple[NginxServer, Pikud], tmp_path: Path) -> None:
    server, daemon = fronted
    work = python_app(tmp_path / "shop", "n1", extra={"ENV": site_env(server)})
    local_remote(work, "shop")
    push(work, daemon.env)
    first = server.wait_for("shop.example", "/", lambda r: r.status == 200)
    assert first.body == b"n1 tinypkg=42" and first.headers["x-deployed-by"] == "pikud"
    assert server.request("shop.example", https=True).body == b"n1 tinypkg=42"

    with statuses_of(server, "shop.example") as results:
        python_app(work, "n2", extra={"ENV": site_env(server)})
        push(work, daemon.env)
        assert daemon.cli("restart", "shop").returncode == 0
        assert daemon.cli("config:set", "shop", "GREETING=hi").returncode == 0
        assert daemon.cli("ps:scale", "shop", "web=3").returncode == 0
        assert daemon.cli("ps:scale", "shop", "web=1").returncode == 0
        python_app(work, "never", extra={"Procfile": "web: sleep 300\n",
                                         "ENV": site_env(server, "PIKU_READY_TIMEOUT=1\n")})
        assert push(work, daemon.env, check=False).returncode != 0
        after = len(results)
        wait_for(lambda: len(results) >= after + 10, DEADLINE, "requests after the refusal")
    assert results and set(results) == {200}, [r for r in results if r != 200][:5]
    assert server.request("shop.example").body == b"n2 tinypkg=42"

    # A broken include file: nginx refuses the config, the push is rejected, n2 keeps serving.
    python_app(work, "n3", extra={"ENV": site_env(server, "NGINX_INCLUDE_FILE=extra.conf\n"),
                                  "extra.conf": "this is not nginx;\n"})
    rejected = push(work, daemon.env, check=False)
    assert rejected.returncode != 0 and "nginx" in rejected.stderr, rejected.stderr
    assert server.request("shop.example").body == b"n2 tinypkg=42"

    # An injection attempt is refused before anything is written.
    before = (server.root / "nginx/shop.conf").read_text()
    python_app(work, "n4", extra={"ENV": site_env(server).replace(
        "shop.example", "shop.example;return 200 pwned")})
    injected = push(work, daemon.env, check=False)
    assert injected.returncode != 0 and "NGINX_SERVER_NAME" in injected.stderr
    assert (server.root / "nginx/shop.conf").read_text() == before
    assert server.request("shop.example").body == b"n2 tinypkg=42"

    # Builds, sites, certificates and switches left the daemon without ssl (jinja2, which
    # renders the sites, imports hashlib, and that maps libcrypto).
    assert daemon.proc is not None
    files = mapped(daemon.proc.pid)
    assert not [name for name in files if any(part in name for part in SSL_ITSELF)]


def test_a_first_deploy_goes_live_once_ready_and_says_what_nginx_cannot_reach(
        fronted: tuple[NginxServer, Pikud], tmp_path: Path) -> None:
    """piku routes the host before the app listens (a 502 per request); pikud waits.

    The ACME webroot's parent is 0700, as a Debian 12 home folder would be:
    the push, and every restart, say which chmod lets nginx's workers
    (www-data) in; `piku setup --fix` applies it.
    """
    server, daemon = fronted
    (daemon.root / "acme").chmod(0o700)
    slow = "import time\ntime.sleep(1.5)\n" + WEB_APP              # the app boots for 1.5 s
    work = python_app(tmp_path / "shop", "n1", extra={"ENV": site_env(server), "server.py": slow})
    local_remote(work, "shop")
    with statuses_of(server, "shop.example") as statuses:
        pushed = push(work, daemon.env)
        server.wait_for("shop.example", "/", lambda r: r.status == 200)
    assert 200 in statuses and [s for s in statuses if s >= 500] == [], set(statuses)
    acme = daemon.root / "acme"
    advice = (f"nginx (user www-data) cannot serve ACME challenges from {acme}/shop: {acme} "
              f"is mode 0700; fix with `chmod o+x {acme}`")
    assert f"-----> Warning: {advice}" in pushed.stderr, pushed.stderr
    assert daemon.log_text("shop", "pikud").count(advice) == 1
    for action in ("restart", "stop", "start"):
        done = daemon.cli(action, "shop")
        assert done.returncode == 0 and f"! {advice}" in done.stdout, done.stdout
    assert daemon.log_text("shop", "pikud").count(advice) == 1        # not at every restart
    setup = daemon.cli("setup", "--fix")                 # as the installer runs it
    assert f"-----> Fixed: chmod o+x {acme}" in setup.stdout, setup.stdout + setup.stderr
    restarted = daemon.cli("restart", "shop")
    assert restarted.returncode == 0 and "cannot" not in restarted.stdout, restarted.stdout


# --- certificates from acme.sh (a stand-in that validates through this nginx) -----
def acme_stand_in(server: NginxServer) -> str:
    """pikud.toml's acme_sh line: the stand-in, validating through ``server``'s nginx."""
    home = server.base / "acme-home"
    home.mkdir()
    program = home / "acme.sh"
    program.write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} --home {home} "
                       f"--http-port {server.http_port} \"$@\"\n")
    program.chmod(0o755)
    return f"acme_sh = {json.dumps(str(program))}\n"


def acme_calls(server: NginxServer) -> list[list[str]]:
    path = server.base / "acme-home" / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_push_gets_a_certificate_from_acme_sh(tmp_path: Path) -> None:
    with fronted_by_nginx(tmp_path, acme_stand_in) as (server, daemon):
        env = site_env(server).replace("shop.example", "shop.example.com")
        work = python_app(tmp_path / "shop", "n1",
                          extra={"ENV": env + "ACME_ROOT_CA=letsencrypt_test\n"})
        local_remote(work, "shop")
        push(work, daemon.env)
        assert server.wait_for("shop.example.com", "/", lambda r: r.status == 200).body \
            == b"n1 tinypkg=42"

        def issued() -> bool:
            return "pikud-test-CA" in subject_and_issuer(served_certificate(server,
                                                                            "shop.example.com"))
        wait_for(issued, DEADLINE, "the certificate from acme.sh served")
        issue = acme_calls(server)[0]
        assert issue[:3] == ["--issue", "-d", "shop.example.com"]
        assert issue[issue.index("--server") + 1] == "letsencrypt_test"
        # acme.sh's reload makes nginx serve it before pikud has checked the pair and said so.
        wait_for(lambda: "acme.sh installed a certificate for shop.example.com"
                 in daemon.log_text("shop", "pikud"), DEADLINE, "the install in the app's log")
        log = daemon.log_text("shop", "pikud")
        assert "asking acme.sh for shop.example.com from letsencrypt_test" in log
        assert server.request("shop.example.com", "/", https=True).body == b"n1 tinypkg=42"

        # An ACME_ROOT_CA that would reach acme.sh's shell is refused; nothing changes.
        conf = server.root / "nginx" / "shop.conf"
        before, calls = conf.read_text(), len(acme_calls(server))
        python_app(work, "n2", extra={"ENV": env + "ACME_ROOT_CA=letsencrypt';id;'\n"})
        refused = push(work, daemon.env, check=False)
        assert refused.returncode != 0 and "ACME_ROOT_CA" in refused.stderr, refused.stderr
        assert conf.read_text() == before and len(acme_calls(server)) == calls
        assert server.request("shop.example.com", "/", https=True).body == b"n1 tinypkg=42"
        assert issued()

        assert daemon.cli("destroy", "shop").returncode == 0
        assert acme_calls(server)[-1] == ["--remove", "-d", "shop.example.com", "--ecc"]
        assert not any(server.root.joinpath("nginx").glob("shop.*"))
