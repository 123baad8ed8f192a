"""nginx sites with a real nginx: apply, reload, serve; a refused config changes nothing.

The fixture starts nginx as a non-daemon master with its own prefix (pid,
logs, temp folders) on free loopback ports (tests/nginx_master.py, shared
with bench/wsgi.py); its http {} includes the test PIKU_ROOT's nginx/*.conf,
as contrib/nginx-pikud.conf does. Run as root, its workers are www-data, as
on Debian, so the tests also prove that nginx's user can read what pikud
writes: the test folders are 0755 for that (pytest's tmp_path sits in a 0700
folder, so they are made under /tmp). Backends are python http.server
threads. Every wait has a deadline; every process started here is stopped,
and the teardown fails if an nginx process outlived it.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pikud.errors import EnvError, NginxError
from pikud.identity import Account
from pikud.proxy.nginx import Nginx
from pikud.proxy.site import site_from_env
from pikud.proxy.tls import ensure_certificate
from tests.integration.nginx_server import Backend, NginxServer, Response
from tests.net import free_port
from tests.nginx_master import AS_ROOT, DEADLINE, NGINX

pytestmark = pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason="nginx is not installed")


def site_files(server: NginxServer) -> list[str]:
    """The files in nginx/ (the apps' sockets folder beside them is not a site's)."""
    return sorted(p.name for p in server.paths.nginx().iterdir() if p.is_file())


def has_ipv6_loopback() -> bool:
    try:
        free_port(socket.AF_INET6, "::1")
    except OSError:
        return False
    return True


def app_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)




# --- tests ------------------------------------------------------------------------
async def test_proxy_with_headers(server: NginxServer, backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    site = server.site("hello", {"NGINX_SERVER_NAME": "hello.test"}, (web.upstream,))
    await server.nginx().apply(site)
    for https in (False, True):
        response = server.wait_for("hello.test", "/path?q=1", lambda r: r.status == 200,
                                   https=https)
        assert response.headers["x-deployed-by"] == "pikud"
        seen = response.json()
        assert seen["name"] == "web-1" and seen["path"] == "/path?q=1"
        headers = seen["headers"]
        port = server.https_port if https else server.http_port
        assert headers["host"] == "hello.test"
        assert headers["x-real-ip"] == "127.0.0.1"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert headers["x-forwarded-proto"] == ("https" if https else "http")
        assert headers["x-forwarded-port"] == str(port)
        assert headers["x-request-start"].startswith("t=")
        assert float(headers["x-request-start"][2:]) == pytest.approx(time.time(), abs=60)
        assert headers["connection"] == "close"
    upgrade = server.request("hello.test", "/ws", headers={"Upgrade": "websocket",
                                                           "Connection": "Upgrade"})
    assert upgrade.json()["headers"]["upgrade"] == "websocket"
    assert upgrade.json()["headers"]["connection"] == "upgrade"
    crt = server.paths.nginx() / "hello.crt"
    key = server.paths.nginx() / "hello.key"
    assert crt.stat().st_mode & 0o777 == 0o644 and key.stat().st_mode & 0o777 == 0o600
    assert site_files(server) == [
        "hello.conf", "hello.crt", "hello.key"]


async def test_every_setting_accepted(server: NginxServer,
                                      backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    app_dir = server.app_dir("all")
    elsewhere = app_dir / "media"                   # absolute, in the app
    app_files(app_dir, {"static/hello.txt": "static hello\n", "static/page.html": "page\n",
                        "static/index.html": "catch all\n", "static/.git/config": "secret\n",
                        "nginx.inc": "add_header X-Included yes;\n"})
    app_files(elsewhere, {"clip.txt": "media\n"})
    acme = server.root / "acme" / "all" / ".well-known" / "acme-challenge"
    app_files(acme, {"token123": "token-content"})
    ipv6 = {"NGINX_IPV6_ADDRESS": "[::1]", "DISABLE_IPV6": "no"} if has_ipv6_loopback() else {}
    env = {
        "NGINX_SERVER_NAME": "all.test,*.all.test",
        "NGINX_HTTPS_ONLY": "yes",
        "NGINX_STATIC_PATHS": f"/static:static,/media:{elsewhere}",
        "NGINX_CATCH_ALL": "static/index.html",
        "NGINX_CACHE_PREFIXES": "cached",
        "NGINX_CACHE_SIZE": "1",
        "NGINX_CACHE_TIME": "60",
        "NGINX_CACHE_REDIRECTS": "30",
        "NGINX_CACHE_ANY": "5",
        "NGINX_CACHE_CONTROL": "120",
        "NGINX_CACHE_EXPIRY": "600",
        "NGINX_CACHE_PATH": str(server.root / "cache" / "all" / "nginx"),
        "NGINX_CLOUDFLARE_ACL": "yes",
        "NGINX_INCLUDE_FILE": "nginx.inc",
        "NGINX_ALLOW_GIT_FOLDERS": "no",
    } | ipv6
    site = server.site("all", env, (web.upstream,), deployer_ip="127.0.0.1")
    await server.nginx().apply(site)

    redirect = server.wait_for("all.test", "/x?y=1", lambda r: r.status == 301)
    assert redirect.headers["location"] == f"https://all.test:{server.https_port}/x?y=1"
    token = server.request("all.test", "/.well-known/acme-challenge/token123")
    assert (token.status, token.body) == (200, b"token-content")

    def https(path: str) -> Response:
        return server.request("www.all.test", path, https=True)
    root = https("/")
    assert root.status == 200 and root.json()["name"] == "web-1"
    assert root.headers["x-deployed-by"] == "pikud"
    assert root.headers["x-included"] == "yes"
    assert https("/static/hello.txt").body == b"static hello\n"
    assert https("/static/page").body == b"page\n"                # $uri.html
    assert https("/static/missing/page").body == b"catch all\n"
    assert https("/media/clip.txt").body == b"media\n"
    assert https("/static/.git/config").status == 403
    assert https("/static../nginx.inc").json()["name"] == "web-1"  # the app, not the folder
    first, second = https("/cached/a"), https("/cached/a")
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.headers["cache-control"] == "public, max-age=120"
    assert second.headers["x-deployed-by"] == "pikud"
    assert (server.root / "cache" / "all" / "nginx").is_dir()
    if ipv6:
        with socket.create_connection(("::1", server.https_port), timeout=DEADLINE):
            pass


async def test_cloudflare_acl_denies_others(server: NginxServer,
                                            backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    acme = server.root / "acme" / "cf" / ".well-known" / "acme-challenge"
    app_files(acme, {"t": "ok"})
    env = {"NGINX_SERVER_NAME": "cf.test", "NGINX_CLOUDFLARE_ACL": "1"}
    await server.nginx().apply(server.site("cf", env, (web.upstream,)))
    server.wait_for("cf.test", "/", lambda r: r.status == 403, what="403 from the ACL")
    assert server.request("cf.test", "/", https=True).status == 403
    assert server.request("cf.test", "/.well-known/acme-challenge/t").body == b"ok"


async def test_static_only_site(server: NginxServer) -> None:
    app_files(server.app_dir("docs"), {"public/index.html": "<h1>docs</h1>\n",
                                       "public/guide.html": "guide\n"})
    site = server.site("docs", {"NGINX_SERVER_NAME": "docs.test"}, static="public")
    await server.nginx().apply(site)
    index = server.wait_for("docs.test", "/", lambda r: r.status == 200)
    assert index.body == b"<h1>docs</h1>\n"
    assert index.headers["content-type"].startswith("text/html")
    assert server.request("docs.test", "/guide").body == b"guide\n"
    assert server.request("docs.test", "/nothing").status == 404


async def test_static_symlinks_are_not_followed(server: NginxServer) -> None:
    app_dir = server.app_dir("links")
    app_files(app_dir, {"dist/ok.txt": "ok\n", "dist/index.html": "index\n",
                        "outside.txt": "outside\n"})
    (app_dir / "public").symlink_to("dist")                 # a link within the app: fine
    (app_dir / "dist" / "passwd").symlink_to("/etc/passwd")  # committed links out of it
    (app_dir / "dist" / "etc").symlink_to("/etc")
    (app_dir / "dist" / "up.txt").symlink_to("../outside.txt")
    site = server.site("links", {"NGINX_SERVER_NAME": "links.test",
                                 "NGINX_STATIC_PATHS": "/pub:public"}, static="dist")
    await server.nginx().apply(site)
    assert server.wait_for("links.test", "/ok.txt", lambda r: r.status == 200).body == b"ok\n"
    assert server.request("links.test", "/pub/ok.txt").body == b"ok\n"
    for path in ("/passwd", "/etc/passwd", "/etc/hostname", "/up.txt", "/pub/passwd",
                 "/pub/etc/passwd"):
        response = server.request("links.test", path)
        assert response.status in (403, 404) and b"root:" not in response.body, path
    with pytest.raises(EnvError) as caught:               # a static folder that is a link out
        server.site("links", {"NGINX_SERVER_NAME": "links.test",
                              "NGINX_STATIC_PATHS": "/pub:dist/etc"})
    assert caught.value.key == "NGINX_STATIC_PATHS"


async def test_unix_socket_and_dead_upstream(server: NginxServer,
                                             backend: Callable[..., Backend]) -> None:
    live = backend("unix-1", unix=server.paths.nginx() / "two.web.1.sock")
    dead = f"127.0.0.1:{free_port()}"
    site = server.site("two", {"NGINX_SERVER_NAME": "two.test"}, (dead, live.upstream))
    await server.nginx().apply(site)
    server.wait_for("two.test", "/", lambda r: r.status == 200)
    # every request lands, though half of them first meet the refused port
    answers = [server.request("two.test", f"/{n}") for n in range(20)]
    assert {(r.status, r.json()["name"]) for r in answers} == {(200, "unix-1")}


async def test_broken_include_keeps_previous(server: NginxServer,
                                             backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    nginx = server.nginx()
    release1 = server.base / "releases" / "1"
    app_files(release1, {"nginx.inc": "add_header X-Release one;\n"})
    env = {"NGINX_SERVER_NAME": "inc.test", "NGINX_INCLUDE_FILE": "nginx.inc"}
    await nginx.apply(server.site("inc", env, (web.upstream,), app_dir=release1))
    server.wait_for("inc.test", "/", lambda r: r.headers.get("x-release") == "one")
    conf = server.paths.nginx() / "inc.conf"
    before = conf.read_bytes()
    listing = site_files(server)

    release2 = server.base / "releases" / "2"
    app_files(release2, {"nginx.inc": "this is not nginx;\n"})
    with pytest.raises(NginxError) as caught:
        await nginx.apply(server.site("inc", env, (web.upstream,), app_dir=release2))
    message = str(caught.value)
    assert 'unknown directive "this"' in message
    assert f"{release2}/nginx.inc (NGINX_INCLUDE_FILE):1" in message
    assert "the previous config stays" in message
    assert conf.read_bytes() == before
    assert site_files(server) == listing
    # still served by the previous config, also after another reload
    await asyncio.to_thread(subprocess.run, nginx.reload_command, check=True, timeout=DEADLINE,
                            capture_output=True)
    response = server.request("inc.test", "/")
    assert (response.status, response.headers.get("x-release")) == (200, "one")


async def test_first_deploy_refused_writes_nothing(server: NginxServer) -> None:
    app_files(server.app_dir("bad"), {"nginx.inc": "this is not nginx;\n"})
    site = server.site("bad", {"NGINX_SERVER_NAME": "bad.test", "NGINX_INCLUDE_FILE": "nginx.inc"})
    with pytest.raises(NginxError, match="no config was written"):
        await server.nginx().apply(site)
    names = site_files(server)
    assert names == ["bad.crt", "bad.key"]   # the certificate may stay; no config, no copy


async def test_bad_app_does_not_block_another(server: NginxServer,
                                              backend: Callable[..., Backend]) -> None:
    web_a, web_b = backend("a-1"), backend("b-1")
    nginx = server.nginx()
    await nginx.apply(server.site("a", {"NGINX_SERVER_NAME": "a.test"}, (web_a.upstream,)))
    app_files(server.app_dir("a"), {"broken.inc": "this is not nginx;\n"})
    broken = server.site("a", {"NGINX_SERVER_NAME": "a.test", "NGINX_INCLUDE_FILE": "broken.inc"},
                         (web_a.upstream,))
    with pytest.raises(NginxError):
        await nginx.apply(broken)
    await nginx.apply(server.site("b", {"NGINX_SERVER_NAME": "b.test"}, (web_b.upstream,)))
    server.wait_for("b.test", "/", lambda r: r.status == 200 and r.json()["name"] == "b-1")
    assert server.request("a.test", "/").json()["name"] == "a-1"
    hidden = [p.name for p in server.paths.nginx().iterdir() if p.name.startswith(".")]
    assert hidden == []


async def test_apply_replaces_and_remove(server: NginxServer,
                                         backend: Callable[..., Backend]) -> None:
    old, new = backend("old"), backend("new")
    nginx = server.nginx()
    await nginx.apply(server.site("app", {"NGINX_SERVER_NAME": "app.test"}, (old.upstream,)))
    server.wait_for("app.test", "/", lambda r: r.status == 200 and r.json()["name"] == "old")
    await nginx.apply(server.site("app", {"NGINX_SERVER_NAME": "app.test"}, (new.upstream,)))
    server.wait_for("app.test", "/", lambda r: r.status == 200 and r.json()["name"] == "new")
    await nginx.apply(server.site("other", {"NGINX_SERVER_NAME": "other.test"}, (old.upstream,)))
    await nginx.remove("app")
    assert site_files(server) == [
        "other.conf", "other.crt", "other.key"]
    # app.test now falls to the port's default server, which is other's
    server.wait_for("app.test", "/", lambda r: r.status == 200 and r.json()["name"] == "old")
    await nginx.remove("app")                     # nothing left to remove: no reload, no error


async def test_reload_failure_reported(server: NginxServer,
                                       backend: Callable[..., Backend]) -> None:
    web = backend("web-1")
    nginx = server.nginx(reload_command=["sh", "-c", "echo no sudo rule >&2; exit 3"])
    with pytest.raises(NginxError, match="reloading nginx failed .*status 3.*\n.*no sudo rule"):
        await nginx.apply(server.site("r", {"NGINX_SERVER_NAME": "r.test"}, (web.upstream,)))
    assert (server.paths.nginx() / "r.conf").exists()   # tested and in place; a reload will do


async def test_with_app_users_the_cache_is_nginx_workers_alone(
        server: NginxServer, backend: Callable[..., Backend], app_users: Account,
        www_data: str) -> None:
    """Not under cache/APP, which the app's user owns: it could swap the folder for a link
    that nginx's master (root) follows when it gives the folder to its workers."""
    web = backend("web-1")
    env = {"NGINX_SERVER_NAME": "c.test", "NGINX_CACHE_PREFIXES": "cached"}
    site = server.site("c", env, (web.upstream,))
    cache = server.root / "cache" / ".nginx" / "c"
    assert site.cache is not None and site.cache.path == str(cache)
    await server.nginx().apply(site)
    worker = pwd.getpwnam(www_data)
    st = cache.stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (worker.pw_uid, worker.pw_gid, 0o700)
    st = cache.parent.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (app_users.uid, 0o711)
    first = server.wait_for("c.test", "/cached/a", lambda r: r.status == 200)
    assert (first.headers["x-cache"], server.request("c.test", "/cached/a").headers["x-cache"]) \
        == ("MISS", "HIT")
    with pytest.raises(EnvError, match="outside"):
        server.site("c", {**env, "NGINX_CACHE_PATH": str(server.root / "cache" / "c" / "x")})


async def test_injection_refused_before_anything_is_written(server: NginxServer) -> None:
    for key, value in [("NGINX_SERVER_NAME", "x.test;} server { listen 9999"),
                       ("NGINX_STATIC_PATHS", "/s:../../etc"),
                       ("NGINX_IPV4_ADDRESS", "127.0.0.1:1 ssl; #")]:
        env = {"NGINX_SERVER_NAME": "inj.test", key: value}
        with pytest.raises(EnvError) as caught:
            server.site("inj", env)
        assert caught.value.key == key
    assert site_files(server) == []


@pytest.mark.skipif(not AS_ROOT, reason="needs root to run the test as www-data")
async def test_unprivileged_test_accepts_low_ports(server: NginxServer) -> None:
    """pikud runs `nginx -t` as its own user: binding 80/443 is the root master's job."""
    server.paths.nginx().chmod(0o777)              # the test's pid file goes there
    as_www_data = ["setpriv", "--reuid=www-data", "--regid=www-data", "--clear-groups", NGINX]
    nginx = Nginx(server.paths, as_www_data, ["true"], preamble=(), timeout=DEADLINE)
    paths = server.paths
    site = site_from_env("low", {"NGINX_SERVER_NAME": "low.test"}, ("127.0.0.1:5000",),
                         paths, server.app_dir("low"))
    assert site is not None and site.http_port == 80
    await ensure_certificate(paths, "low", site.server_names)   # as pikud's user would own it
    shutil.chown(paths.nginx() / "low.key", "www-data")
    await nginx.apply(site)
    assert (paths.nginx() / "low.conf").exists()
    app_files(server.app_dir("low"), {"nginx.inc": "this is not nginx;\n"})
    broken = site_from_env("low", {"NGINX_SERVER_NAME": "low.test",
                                   "NGINX_INCLUDE_FILE": "nginx.inc"},
                           ("127.0.0.1:5000",), paths, server.app_dir("low"))
    assert broken is not None
    with pytest.raises(NginxError, match='unknown directive "this"'):
        await nginx.apply(broken)


async def test_detects_http2_style(server: NginxServer) -> None:
    info = await server.nginx().info()
    expected = "on" if info.version >= (1, 25, 1) else "listen"
    assert info.http2_style == expected
