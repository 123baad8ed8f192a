"""The pure core of the embedded router: addresses, Host and prefix routing, safe static joins."""

from __future__ import annotations

from pathlib import Path

import pytest

from pikud.proxy.router import forward_headers
from pikud.proxy.routing import (
    Redirect,
    Route,
    Target,
    host_name,
    host_table,
    match_static,
    parse_address,
    resolve,
    upstream_url,
)
from pikud.proxy.static import safe_join


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
    ("localhost:0", ("localhost", 0)),
    (":8080", ("127.0.0.1", 8080)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:65535", ("::", 65535)),
    (" example.org:443 ", ("example.org", 443)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text, reason", [
    ("8080", "has no port"),
    ("localhost", "has no port"),
    ("", "has no port"),
    ("::1:8080", "brackets"),
    ("[]:8080", "not a host name"),
    ("[::1:8080", "brackets"),
    ("a b:80", "not a host name"),
    ("user@host:80", "not a host name"),
    ("host:", "0 to 65535"),
    ("host:http", "0 to 65535"),
    ("host:65536", "0 to 65535"),
    ("host:-1", "0 to 65535"),
    ("host:８０", "0 to 65535"),
])
def test_parse_address_refuses(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as info:
        parse_address(text)
    assert repr(text) in str(info.value)


@pytest.mark.parametrize("header, name", [
    ("Example.COM", "example.com"),
    ("example.com:8080", "example.com"),
    ("example.com.", "example.com"),
    ("EXAMPLE.com.:80", "example.com"),
    ("[::1]:8080", "::1"),
    ("[::1]", "::1"),
    ("", ""),
])
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_host_table_adds_implicit_names_and_keeps_the_first_claim() -> None:
    routes = [Route("shop", ("Shop.Example.com", "www.example.com"), ()),
              Route("blog", ("www.example.com", "blog.example.com"), ()),
              Route("www.example.com", (), ())]
    hosts, conflicts = host_table(routes)
    assert hosts == {
        "blog.example.com": "blog", "www.example.com": "blog",      # blog < shop by name
        "shop.example.com": "shop",
        "blog": "blog", "blog.localhost": "blog", "shop": "shop", "shop.localhost": "shop",
        "www.example.com.localhost": "www.example.com",              # explicit names win
    }
    assert len(conflicts) == 2 and all("www.example.com" in c for c in conflicts)
    assert host_table(reversed(routes)) == (hosts, conflicts)    # order of calls is irrelevant


HOSTS, _ = host_table([Route("shop", ("shop.example.com",), ()), Route("Blog", (), ())])
APPS = {"shop", "Blog"}


@pytest.mark.parametrize("host, raw_path, expected", [
    ("shop.example.com", "/a/b?x=1", Target("shop", "/a/b?x=1")),
    ("SHOP.example.COM:8080", "/", Target("shop", "/")),
    ("shop", "/_/Blog/x", Target("shop", "/_/Blog/x")),            # Host wins over the prefix
    ("shop.localhost:8080", "/", Target("shop", "/")),
    ("blog.localhost", "/", Target("Blog", "/")),
    ("127.0.0.1:8080", "/_/shop/", Target("shop", "/", "/_/shop")),
    ("127.0.0.1:8080", "/_/shop/a/b?q=/c", Target("shop", "/a/b?q=/c", "/_/shop")),
    ("127.0.0.1:8080", "/_/shop/?q", Target("shop", "/?q", "/_/shop")),
    ("", "/_/Blog/a%20b", Target("Blog", "/a%20b", "/_/Blog")),
    ("127.0.0.1", "/_/shop", Redirect("/_/shop/")),
    ("127.0.0.1", "/_/shop?x=1", Redirect("/_/shop/?x=1")),
    ("127.0.0.1", "/_/blog/", None),                                # app names are exact in paths
    ("127.0.0.1", "/_/ghost/", None),
    ("127.0.0.1", "/_/", None),
    ("127.0.0.1", "/shop/", None),
    ("ghost.example.com", "/", None),
    ("", "/", None),
])
def test_resolve(host: str, raw_path: str, expected: Target | Redirect | None) -> None:
    assert resolve(HOSTS, APPS, host, raw_path) == expected


STATIC = (("/static", Path("/s")), ("/static/big", Path("/b")), ("/media/", Path("/m")))


@pytest.mark.parametrize("static, path, expected", [
    (STATIC, "/static/a.css", (Path("/s"), "/a.css")),
    (STATIC, "/static", (Path("/s"), "")),
    (STATIC, "/static/", (Path("/s"), "/")),
    (STATIC, "/static/big/x", (Path("/b"), "/x")),                  # the longest prefix
    (STATIC, "/static/bigger", (Path("/s"), "/bigger")),
    (STATIC, "/media/x", (Path("/m"), "/x")),
    (STATIC, "/staticx", None),
    (STATIC, "/", None),
    (((("/", Path("/r"))),), "/any/thing", (Path("/r"), "/any/thing")),
    ((), "/static/a", None),
])
def test_match_static(static: tuple[tuple[str, Path], ...], path: str,
                      expected: tuple[Path, str] | None) -> None:
    assert match_static(static, path) == expected


@pytest.mark.parametrize("rest, inside", [
    ("/a.txt", "a.txt"),
    ("/sub/b.txt", "sub/b.txt"),
    ("//sub/./b.txt", "sub/b.txt"),
    ("/", ""),
    ("", ""),
    ("/missing.txt", "missing.txt"),          # joined; the handler answers 404
    ("/../../etc/passwd", None),
    ("/sub/../a.txt", None),
    ("/..", None),
    ("/a\x00.txt", None),
    ("/escape/passwd", None),                 # a symlink out of the folder
    ("/inner/a.txt", None),                   # a symlink inside it: none is followed
    ("/loop/x", None),
])
def test_safe_join(tmp_path: Path, rest: str, inside: str | None) -> None:
    folder = tmp_path / "static"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "sub" / "b.txt").write_text("b")
    (folder / "escape").symlink_to("/etc")
    (folder / "inner").symlink_to(folder)
    (folder / "loop").symlink_to("loop")
    got = safe_join(folder, rest)
    assert got == (None if inside is None else (folder / inside).resolve())


def test_safe_join_refuses_a_folder_replaced_by_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "public").symlink_to("/etc")
    assert safe_join(tmp_path / "public", "/passwd") is None


@pytest.mark.parametrize("upstream, expected", [
    ("127.0.0.1:5000", ("http://127.0.0.1:5000", None)),
    ("[::1]:5000", ("http://[::1]:5000", None)),
    ("unix:/run/a.sock", ("http://localhost", "/run/a.sock")),
])
def test_upstream_url(upstream: str, expected: tuple[str, str | None]) -> None:
    assert upstream_url(upstream) == expected


@pytest.mark.parametrize("upstream", ["unix:run/a.sock", "127.0.0.1", "http://x:80/", ""])
def test_upstream_url_refuses(upstream: str) -> None:
    with pytest.raises(ValueError):
        upstream_url(upstream)


def test_forward_headers_drops_hop_by_hop() -> None:
    headers = [("Host", "a"), ("Connection", "keep-alive, X-Secret"), ("Keep-Alive", "5"),
               ("Proxy-Authorization", "p"), ("Proxy-Connection", "x"), ("TE", "trailers"),
               ("Trailer", "X"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
               ("X-Secret", "s"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2"),
               ("Sec-WebSocket-Key", "k")]
    out = forward_headers(headers, drop={"sec-websocket-key"})
    assert list(out.items()) == [("Host", "a"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2")]
