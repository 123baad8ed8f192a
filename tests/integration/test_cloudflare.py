"""`piku cloudflare:refresh` against a real daemon, lists served on loopback, a real nginx.

The lists come from a python http.server in a thread on 127.0.0.1, which the
test fills; pikud.toml points cloudflare_urls at it. A refused list must leave
$PIKU_ROOT/pikud/cloudflare_ips.txt exactly as it was; an accepted one must
reach a running app's nginx site, so a loopback client the old ranges turned
away (403) gets through.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from pikud.control.client import RemoteError
from pikud.errors import CloudflareError
from pikud.proxy import cloudflare
from pikud.proxy.site import cloudflare_ranges
from tests.conftest import FAST, Pikud, json_out
from tests.integration.nginx_server import NginxServer, fronted_by_nginx
from tests.net import Answer, HttpServer, free_port
from tests.waiting import wait_for

V4 = "198.51.100.0/24\n203.0.113.0/24\n"
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None, reason="nginx is not installed")
V6 = "2001:db8::/32\n"


class Lists:
    """Serves ``files`` (path -> body) on a loopback port; other paths are 404."""

    def __init__(self) -> None:
        self.files: dict[str, str] = {"/ips-v4": V4, "/ips-v6": V6}
        self.server = HttpServer(self.answer)

    def answer(self, request: BaseHTTPRequestHandler) -> Answer:
        body = self.files.get(request.path)
        if body is None:
            return 404, "text/plain", b"not found\n"
        return 200, "text/plain", body.encode()

    def url(self, path: str) -> str:
        return self.server.url(path)

    def settings(self, days: float = 0) -> str:
        urls = [self.url("/ips-v4"), self.url("/ips-v6")]
        return f"cloudflare_urls = {json.dumps(urls)}\ncloudflare_refresh_days = {days}\n"

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def lists() -> Iterator[Lists]:
    made = Lists()
    try:
        yield made
    finally:
        made.close()


def refused(daemon: Pikud, *needles: str) -> str:
    """Run the refresh, expect exit 1 with one `Error:` line naming every needle."""
    result = daemon.cli("cloudflare:refresh")
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.startswith("Error: ") and result.stdout == ""
    for needle in needles:
        assert needle in result.stderr, result.stderr
    return result.stderr


def test_refresh_writes_the_list_once_and_refuses_bad_ones(
        pikud_factory: Callable[..., Pikud], short_root: Path, lists: Lists) -> None:
    (short_root / "pikud.toml").write_text(lists.settings())
    daemon = pikud_factory()
    target = short_root / "pikud" / "cloudflare_ips.txt"

    data = json_out(daemon.cli("cloudflare:refresh", "--json"))
    assert data["changed"] is True and data["file"] == str(target)
    assert (data["ranges"], data["ipv4"], data["ipv6"]) == (3, 2, 1)
    assert data["sources"] == [{"url": lists.url("/ips-v4"), "ranges": 2},
                               {"url": lists.url("/ips-v6"), "ranges": 1}]
    assert data["nginx"] is False and data["apps"] == []
    text = target.read_text()
    assert text.startswith("# Cloudflare's address ranges for NGINX_CLOUDFLARE_ACL")
    assert f"#   {lists.url('/ips-v4')} (2 ranges)" in text
    assert f"#   {lists.url('/ips-v6')} (1 ranges)" in text
    assert cloudflare_ranges(target) == ("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
    before, stamp = target.read_bytes(), target.stat().st_mtime_ns

    again = daemon.cli("cloudflare:refresh", check=True)
    assert "unchanged: 3 (2 IPv4, 1 IPv6); nothing was touched" in again.stdout
    assert (target.read_bytes(), target.stat().st_mtime_ns) == (before, stamp)

    lists.files["/ips-v4"] = "<html><body>Attention Required!</body></html>\n"
    refused(daemon, lists.url("/ips-v4"), "line 1", "<html>", "nothing changed")
    lists.files["/ips-v4"] = ""
    refused(daemon, lists.url("/ips-v4"), "the list is empty")
    lists.files["/ips-v4"] = "198.51.100.0/24\n104.16.0.1/13\n"
    refused(daemon, lists.url("/ips-v4"), "line 2", "104.16.0.1/13", "host bits set")
    lists.files["/ips-v4"] = V4
    lists.files["/ips-v6"] = "2001:db8::/32\n10.0.0.0/8\n2001:db8::/32 extra\n"
    refused(daemon, lists.url("/ips-v6"), "line 3")
    del lists.files["/ips-v6"]
    refused(daemon, lists.url("/ips-v6"), "HTTP 404")
    with pytest.raises(RemoteError) as caught:
        daemon.api("POST", "/cloudflare/refresh")
    assert (caught.value.code, caught.value.status) == ("cloudflare_failed", 502)
    assert (target.read_bytes(), target.stat().st_mtime_ns) == (before, stamp)

    # An unreachable URL, set through pikud.toml and SIGHUP like any setting.
    dead = f"http://127.0.0.1:{free_port()}/ips-v6"
    (short_root / "pikud.toml").write_text(
        f"cloudflare_urls = {json.dumps([lists.url('/ips-v4'), dead])}\n")
    assert daemon.proc is not None
    daemon.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "SIGHUP: settings re-read" in daemon.output(), 10, "the SIGHUP")
    refused(daemon, dead, "cannot download it")
    assert (target.read_bytes(), target.stat().st_mtime_ns) == (before, stamp)


async def test_the_download_child_is_bounded_in_size_and_time(
        lists: Lists, monkeypatch: pytest.MonkeyPatch) -> None:
    assert [item.ranges for item in await cloudflare.fetch([lists.url("/ips-v6")])] == \
        [("2001:db8::/32",)]
    lists.files["/big"] = "198.51.100.0/24\n" * 100
    with pytest.raises(CloudflareError, match="larger than 1 KiB"):
        await cloudflare.fetch([lists.url("/big")], max_bytes=1024)
    # An error page on one line (here a portal's, in Russian): its error names the line,
    # though the page escaped in JSON would be longer than a line the daemon reads.
    lists.files["/portal"] = f"<html><body>{'Доступ запрещён. ' * 800}</body></html>"
    with pytest.raises(CloudflareError, match=r"/portal, line 1: '<html><body>Доступ.*' is not "
                                              r"an IP network; nothing changed$"):
        await cloudflare.fetch([lists.url("/portal")])
    with socket.socket() as silent:     # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ips-v4"
        with pytest.raises(CloudflareError, match=r"no complete answer within 0\.5s"):
            await cloudflare.fetch([url], timeout=0.5)
        monkeypatch.setattr(cloudflare, "CHILD_START", 0.0)     # the child itself overruns
        with pytest.raises(CloudflareError, match=r"did not finish within 0\.5s"):
            await cloudflare.fetch([url], timeout=0.5)


# --- through a real nginx --------------------------------------------------------
@pytest.fixture
def front(tmp_path: Path, lists: Lists) -> Iterator[Callable[..., tuple[NginxServer, Pikud]]]:
    """Starts a real nginx and a pikud whose sites it serves (fronted_by_nginx).

    ``days`` is the daemon's cloudflare_refresh_days (0: no automatic refresh).
    """
    with contextlib.ExitStack() as stack:
        def start(days: float = 0) -> tuple[NginxServer, Pikud]:
            return stack.enter_context(
                fronted_by_nginx(tmp_path, lambda server: lists.settings(days)))
        yield start


def site_apps(server: NginxServer, daemon: Pikud) -> Path:
    """Deploy "guarded" (NGINX_CLOUDFLARE_ACL) and "open" (without); guarded's conf path."""
    web = "web: exec python3 -m http.server $PORT --bind 127.0.0.1\n"
    ports = (f"NGINX_IPV4_ADDRESS=127.0.0.1\nDISABLE_IPV6=yes\nNGINX_HTTP_PORT={server.http_port}"
             f"\nNGINX_HTTPS_PORT={server.https_port}\n")
    daemon.add_app("guarded", web, FAST + ports + "NGINX_SERVER_NAME=guarded.test\n"
                   "NGINX_CLOUDFLARE_ACL=yes\n")
    daemon.add_app("open", web, FAST + ports + "NGINX_SERVER_NAME=open.test\n")
    for app in ("guarded", "open"):
        daemon.api("POST", f"/apps/{app}/deploy")
    conf = server.root / "nginx" / "guarded.conf"
    assert "allow 173.245.48.0/20;" in conf.read_text()             # the bundled list
    server.wait_for("guarded.test", "/", lambda r: r.status == 403, what="403 from the ACL")
    return conf


@needs_nginx
def test_refresh_reaches_the_nginx_site_of_acl_apps(
        front: Callable[..., tuple[NginxServer, Pikud]], lists: Lists) -> None:
    server, daemon = front()
    conf = site_apps(server, daemon)
    open_before = (server.root / "nginx" / "open.conf").read_bytes()

    lists.files["/ips-v4"] = "127.0.0.0/8\n198.51.100.0/24\n"
    data = json_out(daemon.cli("cloudflare:refresh", "--json"))
    assert data["changed"] is True and data["nginx"] is True
    assert data["apps"] == [{"name": "guarded", "site": "updated", "error": None}]
    text = conf.read_text()
    assert "allow 127.0.0.0/8;" in text and "allow 2001:db8::/32;" in text
    assert "173.245.48.0/20" not in text
    assert (server.root / "nginx" / "open.conf").read_bytes() == open_before
    server.wait_for("guarded.test", "/", lambda r: r.status == 200, what="the new ranges live")
    assert "guarded: nginx site re-published with Cloudflare's new ranges" in \
        daemon.log_text("guarded", "pikud")

    plain = daemon.cli("cloudflare:refresh", check=True)
    assert "unchanged" in plain.stdout and conf.read_text() == text


@needs_nginx
def test_automatic_refresh_logs_a_failure_then_applies_a_good_list(
        front: Callable[..., tuple[NginxServer, Pikud]], lists: Lists) -> None:
    lists.files["/ips-v4"] = "<html>\n"
    server, daemon = front(days=0.00002)        # every 1.7 s
    conf = site_apps(server, daemon)
    target = server.root / "pikud" / "cloudflare_ips.txt"
    wait_for(lambda: "automatic refresh failed, the list in force stays" in daemon.output(), 10,
             "the failed automatic refresh to be logged")
    assert lists.url("/ips-v4") in daemon.output() and not target.exists()
    assert daemon.api("GET", "/status")["pid"] == daemon.proc.pid       # it only logged
    lists.files["/ips-v4"] = "127.0.0.0/8\n"
    wait_for(lambda: "sites updated: guarded" in daemon.output(), 10, "the next automatic refresh")
    assert cloudflare_ranges(target) == ("127.0.0.0/8", "2001:db8::/32")
    assert "allow 127.0.0.0/8;" in conf.read_text()
    server.wait_for("guarded.test", "/", lambda r: r.status == 200, what="the new ranges live")
