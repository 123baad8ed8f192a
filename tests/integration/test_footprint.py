"""What a real daemon loads: behind nginx, stock asyncio and none of aiohttp (its client
and server are the router's alone; the control socket speaks HTTP with h11) nor ssl
(launch.py); at rest, nothing that only a build, cron, a file watch, a site or pikud.toml
needs (each is imported at first use)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pikud.errors import PikudError
from tests.conftest import FAST, Pikud, wait_for

# aiohttp and the compiled packages it brings: any of them mapped means it was imported.
AIOHTTP = ("/aiohttp/", "/multidict/", "/yarl/", "/frozenlist/", "/propcache/")
# ssl's compiled module and the OpenSSL libraries it links: held off on stock asyncio.
# libcrypto alone also comes with hashlib (aiohttp's, jinja2's once a site renders).
SSL_ITSELF = ("/_ssl.", "/libssl.so")
SSL = (*SSL_ITSELF, "/libcrypto.so")


# What a daemon with no apps (and no pikud.toml) must not have imported, and what brings it:
# a build, cron, a site rendered, pikud.toml, a str host resolved (IDNA).
RESTING_WITHOUT = ("pikud.deploy.pipeline", "pikud.deploy.runtimes", "croniter", "zoneinfo",
                   "jinja2", "tomllib", "unicodedata", "pikud.proxy.connections")
# What an app without cron entries does not bring either: cron's scheduler and datetime.
CRON = ("pikud.cron.scheduler", "pikud.cron.jobs", "datetime")
# What not even an app without cron entries brings (croniter's dateutil brings shutil
# and tempfile): the command line is parsed by hand (argparse),
# programs found and atomic files made by pikud (shutil, tempfile), inotify called through
# ctypes without ctypes.util, digests made by CPython's own SHA-256 (hashlib), tokens taken
# from os.urandom (secrets), the user named by pwd (getpass); difflib only names the key an
# unknown NGINX_* key resembles.
PLAIN_WITHOUT = ("argparse", "gettext", "shutil", "tempfile", "ctypes.util", "hashlib", "secrets",
         "getpass", "difflib")


def imported(output: str) -> set[str]:
    """The modules a daemon run with PYTHONPROFILEIMPORTTIME=1 imported (its stderr)."""
    return {line.rsplit("|", 1)[1].strip() for line in output.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def mapped(pid: int) -> set[str]:
    """The files mapped into ``pid``: its interpreter, and every compiled module it imported."""
    lines = Path(f"/proc/{pid}/maps").read_text().splitlines()
    return {line.split(None, 5)[5] for line in lines if len(line.split(None, 5)) == 6}


def exercise(daemon: Pikud) -> None:
    """Deploy with a progress stream, read the logs, the status and the events."""
    daemon.add_app("small", "worker: echo up; sleep 300\n", FAST)
    lines = list(daemon.client.stream("POST", "/apps/small/deploy?progress=1"))
    assert lines[-1]["end"] is True
    daemon.wait_state("small", "small:worker.1", "RUNNING")
    assert daemon.api("GET", "/apps/small/logs?lines=5")["lines"]
    assert daemon.api("GET", "/status")["apps"] == 1


def test_a_daemon_behind_nginx_runs_stock_asyncio_without_aiohttp_or_ssl(
        pikud_factory: Callable[..., Pikud]) -> None:
    daemon = pikud_factory(extra_env={"PIKU_PROXY": "nginx"})
    exercise(daemon)
    status = daemon.api("GET", "/status")
    assert (status["http"], status["loop"]) == (None, "asyncio")
    assert daemon.proc is not None
    files = mapped(daemon.proc.pid)
    assert any("/_ctypes." in name for name in files), "the probe sees compiled modules"
    assert not [name for name in files if any(part in name for part in AIOHTTP + SSL)]
    assert not [name for name in files if "/uvloop/" in name]


def test_a_daemon_that_routes_runs_uvloop_with_aiohttp(pikud: Pikud) -> None:
    """The counterpart: the router's daemon has uvloop, aiohttp and ssl (which uvloop
    cannot do without) mapped, so the probe above sees them."""
    exercise(pikud)
    assert pikud.proc is not None and pikud.api("GET", "/status")["loop"] == "uvloop"
    files = mapped(pikud.proc.pid)
    for part in ("/uvloop/", "/aiohttp/", *SSL):
        assert [name for name in files if part in name], part


def test_the_loop_given_is_the_loop_run(pikud_factory: Callable[..., Pikud]) -> None:
    behind_nginx = pikud_factory("--loop", "uvloop", extra_env={"PIKU_PROXY": "nginx"})
    assert behind_nginx.api("GET", "/status")["loop"] == "uvloop"
    behind_nginx.stop()
    routing = pikud_factory("--loop", "asyncio")
    exercise(routing)
    assert routing.api("GET", "/status")["loop"] == "asyncio"
    assert routing.proc is not None
    files = mapped(routing.proc.pid)        # aiohttp's hashlib maps libcrypto, not ssl
    assert not [name for name in files if any(part in name for part in SSL_ITSELF)]


def test_a_resting_daemon_imports_only_what_its_work_needs(
        pikud_factory: Callable[..., Pikud]) -> None:
    daemon = pikud_factory(extra_env={"PIKU_PROXY": "nginx", "PYTHONPROFILEIMPORTTIME": "1"})
    resting = imported(daemon.output())
    assert "pikud.control.server" in resting, "the probe sees the daemon's imports"
    assert not [name for name in RESTING_WITHOUT + PLAIN_WITHOUT + CRON if name in resting]
    daemon.add_app("plain", "worker: echo up; sleep 300\n", FAST + "TOUCH=1\n")
    daemon.api("POST", "/apps/plain/deploy")                # its ENV and SCALING watched
    wait_for(lambda: "up" in daemon.log_text("plain", "worker.1"), 10, "the worker's output")
    daemon.api("POST", "/apps/plain/config", {"set": {"COLOR": "blue"}})   # an atomic write
    assert daemon.api("GET", "/apps/plain/cron") == {"jobs": []}
    with pytest.raises(PikudError, match="app 'plain' has no cron job 'cron1'"):
        daemon.api("POST", "/apps/plain/cron/cron1/run")  # a cron:run typed for the wrong app
    plain = imported(daemon.output())
    assert not [name for name in PLAIN_WITHOUT + CRON if name in plain]
    daemon.add_app("timed", "worker: sleep 300\ncron1: 0 3 * * * echo nightly\n"
                   "cron2: @reboot echo booted\n", FAST + "TZ=Europe/Berlin\n")
    daemon.api("POST", "/apps/timed/deploy")
    wait_for(lambda: "booted" in daemon.log_text("timed", "cron2"), 10, "the @reboot job")
    daemon.api("POST", "/apps/timed/config", {"set": {"COLOR": "blue"}})   # no build key
    working = imported(daemon.output())
    assert {"croniter", "zoneinfo", *CRON} <= working
    assert not {"pikud.deploy.pipeline", "pikud.deploy.runtimes"} & working
    assert daemon.api("GET", "/apps/timed/cron")["jobs"][0]["next_run"][11:16] == "03:00"
