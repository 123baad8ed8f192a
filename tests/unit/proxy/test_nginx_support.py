"""pikud.proxy.nginx and tls, the pure parts: nginx -V, judging nginx -t, names, access."""

from __future__ import annotations

import grp
import shutil
from pathlib import Path

import pytest

from pikud.errors import NginxError
from pikud.proxy.locations import StaticPath
from pikud.proxy.nginx import NginxInfo, access_problems, passed_test
from pikud.proxy.site import NginxSite
from pikud.proxy.tls import subject_names

DEBIAN_V = """nginx version: nginx/1.22.1
built with OpenSSL 3.0.11 19 Sep 2023
TLS SNI support enabled
configure arguments: --with-cc-opt='-g -O2' --prefix=/usr/share/nginx --with-http_ssl_module \
--with-http_v2_module --with-http_sub_module
"""


@pytest.mark.parametrize(("text", "version", "style"), [
    (DEBIAN_V, (1, 22, 1), "listen"),
    (DEBIAN_V.replace("1.22.1", "1.25.0"), (1, 25, 0), "listen"),
    (DEBIAN_V.replace("1.22.1", "1.25.1"), (1, 25, 1), "on"),
    (DEBIAN_V.replace("1.22.1", "1.27.4"), (1, 27, 4), "on"),
    (DEBIAN_V.replace("--with-http_v2_module ", ""), (1, 22, 1), "off"),
    ("nginx version: openresty/1.21.4.3\nnginx/1.21.4 --with-http_v2_module", (1, 21, 4),
     "listen"),
])
def test_nginx_info(text: str, version: tuple[int, int, int], style: str) -> None:
    info = NginxInfo.parse(text)
    assert info.version == version
    assert info.http2_style == style


def test_nginx_info_error_log_flag() -> None:
    assert not NginxInfo((1, 18, 0), True).has_error_log_flag
    assert NginxInfo((1, 19, 5), True).has_error_log_flag


def test_nginx_info_unreadable() -> None:
    with pytest.raises(NginxError, match="version"):
        NginxInfo.parse("command not found")


OK = "nginx: the configuration file /x/main syntax is ok\n"
FAILED = "nginx: configuration file /x/main test failed\n"


@pytest.mark.parametrize(("code", "output", "passed"), [
    (0, OK + "nginx: configuration file /x/main test is successful\n", True),
    (1, OK + "2026/01/01 [emerg] 1#1: bind() to 0.0.0.0:80 failed (13: Permission denied)\n"
     + FAILED, True),
    (1, OK + '2026/01/01 [emerg] 1#1: open() "/var/log/nginx/a.log" failed '
     "(13: Permission denied)\n" + FAILED, True),
    (1, '[alert] could not open error log file: open() "/var/log/nginx/error.log" failed '
     "(13: Permission denied)\n" + OK + "[emerg] bind() to 0.0.0.0:443 failed "
     "(13: Permission denied)\n" + FAILED, True),
    # a permission error before the parse finished is no pass
    (1, '[emerg] open() "/app/nginx.inc" failed (13: Permission denied) in /x/a.conf:9\n'
     + FAILED, False),
    (1, '[emerg] unknown directive "this" in /app/nginx.inc:1\n' + FAILED, False),
    (1, OK + "[emerg] bind() to 127.0.0.1:8080 failed (99: Cannot assign requested address)\n"
     + FAILED, False),
    (1, OK + FAILED, False),
    (1, "", False),
])
def test_passed_test(code: int, output: str, passed: bool) -> None:
    assert passed_test(code, output) is passed


@pytest.mark.parametrize(("names", "common", "alt"), [
    (("example.com",), "example.com", "DNS:example.com"),
    (("a.com", "*.b.com"), "a.com", "DNS:a.com,DNS:*.b.com"),
    (("_",), "app", ""),
    (("_", "127.0.0.1"), "127.0.0.1", "IP:127.0.0.1"),
    (("a" * 60 + ".example.com", "b.com"), "b.com",
     "DNS:" + "a" * 60 + ".example.com,DNS:b.com"),
])
def test_subject_names(names: tuple[str, ...], common: str, alt: str) -> None:
    assert subject_names("app", names) == (common, alt)


def site_with(static: Path, socket: Path) -> NginxSite:
    return NginxSite(app="a", server_names=("a.com",), upstreams=(f"unix:{socket}",),
                     certificate="/c", certificate_key="/k", acme_root="/acme",
                     static_paths=(StaticPath("/s/", f"{static}/"),))


def test_access_problems(open_dir: Path, www_data: str) -> None:
    home = open_dir / "home"
    (home / "static").mkdir(parents=True)
    (home / "static").chmod(0o755)
    sockets = home / "sockets"
    sockets.mkdir(mode=0o700)
    sock = sockets / "web.sock"
    sock.write_text("")
    sock.chmod(0o660)
    home.chmod(0o700)
    site = site_with(home / "static", sock)
    problems = access_problems(site, www_data)
    assert problems == [
        f"nginx (user www-data) cannot read {home}/static: {home} is mode 0700; "
        f"fix with `chmod o+x {home}` (or give group www-data access)",
        f"nginx (user www-data) cannot connect to the apps' sockets in {sockets}: {home} is "
        f"mode 0700; fix with `chmod o+x {home}` (or give group www-data access)",
    ]
    home.chmod(0o711)
    (home / "static").chmod(0o700)
    group = grp.getgrgid(sockets.stat().st_gid).gr_name
    assert access_problems(site, www_data) == [
        f"nginx (user www-data) cannot read {home}/static: it is mode 0700; "
        f"fix with `chmod o+rx {home}/static` (or give group www-data access)",
        f"nginx (user www-data) cannot connect to the apps' sockets in {sockets}: it is mode "
        f"0700, group {group}; as root, fix with `chgrp -R www-data {sockets} && "
        f"chmod u=rwx,g=rxs,o-rw {sockets}` (`piku setup --fix` does)",
    ]
    (home / "static").chmod(0o755)
    shutil.chown(sockets, group="www-data")
    sockets.chmod(0o2750)       # the folder decides: sockets are made 0660 in it, its group's
    assert access_problems(site, www_data) == []


def test_access_problems_skip_missing_and_unknown_user(open_dir: Path) -> None:
    site = site_with(open_dir / "missing" / "static", open_dir / "missing" / "web.sock")
    assert access_problems(site, "www-data") == []
    assert access_problems(site, "no-such-user-pikud") == []


def test_access_problems_cover_the_acme_webroot(open_dir: Path, www_data: str) -> None:
    acme = open_dir / "root" / "acme" / "a"
    acme.mkdir(parents=True)
    acme.chmod(0o700)
    site = NginxSite(app="a", server_names=("a.com",), upstreams=("127.0.0.1:1",),
                     certificate="/c", certificate_key="/k", acme_root=str(acme))
    assert access_problems(site, www_data) == [
        f"nginx (user www-data) cannot serve ACME challenges from {acme}: it is mode 0700; "
        f"fix with `chmod o+rx {acme}` (or give group www-data access)"]
    acme.chmod(0o755)
    assert access_problems(site, www_data) == []
