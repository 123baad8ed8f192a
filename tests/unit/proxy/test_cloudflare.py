"""Cloudflare's lists: strict parsing, the file pikud writes, its settings and its output."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from pikud.errors import CloudflareError
from pikud.output import format_cloudflare
from pikud.proxy.cloudflare import RangeList, format_file, merged, parse_list
from pikud.proxy.site import cloudflare_ranges
from pikud.settings import load_settings

URL = "https://lists.test/ips-v4"


@pytest.mark.parametrize("text, ranges", [
    ("173.245.48.0/20\n103.21.244.0/22\n", ("173.245.48.0/20", "103.21.244.0/22")),
    ("173.245.48.0/20\r\n\r\n  2400:cb00::/32  ", ("173.245.48.0/20", "2400:cb00::/32")),
    ("2400:CB00:0::/32", ("2400:cb00::/32",)),                      # written canonically
    ("192.0.2.7", ("192.0.2.7/32",)),
])
def test_good_lists(text: str, ranges: tuple[str, ...]) -> None:
    assert parse_list(URL, text) == RangeList(URL, ranges)


@pytest.mark.parametrize("text, named", [
    ("", f"{URL}: the list is empty; nothing changed"),
    ("\n  \n", f"{URL}: the list is empty"),
    ("<!DOCTYPE html>\n<html>", f"{URL}, line 1: '<!DOCTYPE html>' is not an IP network"),
    ("173.245.48.0/20\n104.16.0.1/13\n", f"{URL}, line 2: '104.16.0.1/13' is not an IP "
                                         "network (104.16.0.1/13 has host bits set)"),
    ("173.245.48.0/20 # comment\n", f"{URL}, line 1: '173.245.48.0/20 # comment'"),
    ("10.0.0.0/33\n", f"{URL}, line 1: '10.0.0.0/33'"),
    ("x" * 200, f"{URL}, line 1: '{'x' * 80}...' is not"),
])
def test_bad_lists_name_the_url_and_line(text: str, named: str) -> None:
    with pytest.raises(CloudflareError) as caught:
        parse_list(URL, text)
    assert named in str(caught.value) and len(str(caught.value)) < 300     # bounded
    assert caught.value.code == "cloudflare_failed" and caught.value.status == 502


def test_the_file_says_where_and_when_and_reads_back(tmp_path: Path) -> None:
    lists = [RangeList(URL, ("198.51.100.0/24", "203.0.113.0/24")),
             RangeList("https://lists.test/ips-v6", ("2001:db8::/32", "198.51.100.0/24"))]
    assert merged(lists) == ("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
    when = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    text = format_file(lists, when)
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert f"#   {URL} (2 ranges)" in header
    assert "#   https://lists.test/ips-v6 (2 ranges)" in header
    assert any(when.astimezone().isoformat(timespec="seconds") in line for line in header)
    path = tmp_path / "cloudflare_ips.txt"
    path.write_text(text)
    assert cloudflare_ranges(path) == merged(lists)


def test_settings_default_and_given(tmp_path: Path) -> None:
    path = tmp_path / "pikud.toml"
    settings = load_settings(path)
    assert settings.cloudflare_urls == ("https://www.cloudflare.com/ips-v4",
                                        "https://www.cloudflare.com/ips-v6")
    assert settings.cloudflare_refresh_days == 7
    path.write_text('cloudflare_urls = ["http://127.0.0.1:8/v4"]\ncloudflare_refresh_days = 0\n')
    settings = load_settings(path)
    assert (settings.cloudflare_urls, settings.cloudflare_refresh_days) == (
        ("http://127.0.0.1:8/v4",), 0)


def result(**fields: Any) -> dict[str, Any]:
    return {"changed": True, "file": "/r/pikud/cloudflare_ips.txt", "ranges": 22, "ipv4": 15,
            "ipv6": 7, "sources": [], "nginx": True, "apps": []} | fields


def test_format_unchanged() -> None:
    assert format_cloudflare(result(changed=False), False) == (
        "-----> Cloudflare's ranges are unchanged: 22 (15 IPv4, 7 IPv6); nothing was touched")


def test_format_changed_lines_up_each_app() -> None:
    apps = [{"name": "shop", "site": "updated", "error": None},
            {"name": "blog-two", "site": "not running", "error": None},
            {"name": "x", "site": "failed", "error": "nginx refused the new config of x"}]
    assert format_cloudflare(result(apps=apps), False).splitlines() == [
        "-----> Cloudflare's ranges changed: 22 (15 IPv4, 7 IPv6) written to "
        "/r/pikud/cloudflare_ips.txt",
        "APP       NGINX SITE",
        "shop      updated",
        "blog-two  not running",
        "x         failed",
        "-----> x: nginx refused the new config of x",
    ]
    coloured = format_cloudflare(result(apps=apps), True)
    assert "\x1b[32mupdated\x1b[0m" in coloured and "\x1b[31mfailed\x1b[0m" in coloured


def test_format_changed_without_users() -> None:
    assert "No app uses NGINX_CLOUDFLARE_ACL" in format_cloudflare(result(), False)
    assert "No nginx in front" in format_cloudflare(result(nginx=False), False)
