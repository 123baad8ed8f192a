"""pikud.proxy.site, locations, render: NGINX_* settings -> NginxSite -> config (golden files).

The golden files hold "{root}" where the test's PIKU_ROOT was; regenerate them
with PIKUD_UPDATE_GOLDEN=1 and read the diff before committing it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from pikud.errors import EnvError, ProcfileError
from pikud.paths import Paths
from pikud.proxy.locations import StaticPath
from pikud.proxy.render import Http2Style, nginx_name, quote, render
from pikud.proxy.site import (
    KEYS,
    CacheSettings,
    Include,
    NginxSite,
    cloudflare_ranges,
    server_names,
    site_from_env,
    unknown_key_warnings,
    unknown_keys,
)

GOLDEN = Path(__file__).parent / "golden"
APP = "my-app"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    app_dir = tmp_path / "apps" / APP
    (app_dir / "static").mkdir(parents=True)
    (app_dir / "media").mkdir()
    (app_dir / "nginx.inc").write_text("add_header X-Included yes;\n")
    return tmp_path


def make(root: Path, env: Mapping[str, str], upstreams: tuple[str, ...] = ("127.0.0.1:5000",),
         *, static: str | None = None, deployer_ip: str | None = None) -> NginxSite | None:
    """The site of ``env`` ("{root}" in a value is the test's PIKU_ROOT)."""
    paths = Paths(root)
    env = {key: value.replace("{root}", str(root)) for key, value in env.items()}
    return site_from_env(APP, env, upstreams, paths, paths.app(APP), static=static,
                         deployer_ip=deployer_ip)


def check_golden(name: str, text: str, root: Path) -> None:
    text = text.replace(str(root), "{root}")
    path = GOLDEN / f"nginx_{name}.conf"
    if os.environ.get("PIKUD_UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), f"render differs from {path.name}"


EVERYTHING = {
    "NGINX_SERVER_NAME": "example.com, www.example.com,*.example.org",
    "NGINX_HTTPS_ONLY": "true",
    "NGINX_STATIC_PATHS": f"/static:static,/media/:{{root}}/apps/{APP}/media/",
    "NGINX_CATCH_ALL": "static/index.html",
    "NGINX_CACHE_PREFIXES": "api,/blog/posts",
    "NGINX_CACHE_SIZE": "2",
    "NGINX_CACHE_TIME": "60",
    "NGINX_CACHE_REDIRECTS": "30",
    "NGINX_CACHE_ANY": "10",
    "NGINX_CACHE_CONTROL": "120",
    "NGINX_CACHE_EXPIRY": "3600",
    "NGINX_CACHE_PATH": f"{{root}}/cache/{APP}/nginx",
    "NGINX_CLOUDFLARE_ACL": "yes",
    "NGINX_INCLUDE_FILE": "nginx.inc",
    "NGINX_ALLOW_GIT_FOLDERS": "1",
    "NGINX_IPV4_ADDRESS": "127.0.0.1",
    "NGINX_IPV6_ADDRESS": "[::1]",
    "NGINX_HTTP_PORT": "8080",
    "NGINX_HTTPS_PORT": "8443",
}

CASES: dict[str, tuple[dict[str, str], tuple[str, ...], dict[str, str], Http2Style]] = {
    "minimal": ({"NGINX_SERVER_NAME": "example.com"}, ("127.0.0.1:5000",), {}, "listen"),
    "everything": (EVERYTHING, ("127.0.0.1:5000", "unix:/run/pikud/my-app.web.1.sock"),
                   {"deployer_ip": "203.0.113.7"}, "on"),
    "static_only": ({"NGINX_SERVER_NAME": "static.example.com", "DISABLE_IPV6": "yes"}, (),
                    {"static": "public"}, "off"),
    "static_root_with_app": ({"NGINX_SERVER_NAME": "example.com",
                              "NGINX_STATIC_PATHS": "/:public"}, ("127.0.0.1:5000",), {},
                             "listen"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_render_golden(root: Path, case: str) -> None:
    env, upstreams, kwargs, http2_style = CASES[case]
    site = make(root, env, upstreams, **kwargs)  # type: ignore[arg-type]
    assert site is not None
    check_golden(case, render(site, http2_style=http2_style), root)


def test_render_is_deterministic(root: Path) -> None:
    site = make(root, EVERYTHING)
    assert site is not None
    assert render(site) == render(site)


def test_everything_parsed(root: Path) -> None:
    site = make(root, EVERYTHING, deployer_ip="203.0.113.7")
    app_dir = root / "apps" / APP
    assert site == NginxSite(
        app=APP,
        server_names=("example.com", "www.example.com", "*.example.org"),
        upstreams=("127.0.0.1:5000",),
        certificate=f"{root}/nginx/{APP}.crt",
        certificate_key=f"{root}/nginx/{APP}.key",
        acme_root=f"{root}/acme/{APP}",
        https_only=True,
        ipv4_address="127.0.0.1",
        ipv6_address="::1",
        http_port=8080,
        https_port=8443,
        static_paths=(StaticPath("/static/", f"{app_dir}/static/"),
                      StaticPath("/media/", f"{app_dir}/media/")),
        catch_all=f"{app_dir}/static/index.html",
        cache=CacheSettings(("/api", "/blog/posts"), f"{root}/cache/{APP}/nginx", size_gb=2,
                            content_time=60, redirect_time=30, any_time=10, max_age=120,
                            inactive=3600),
        allow=cloudflare_ranges() + ("203.0.113.7",),
        include=Include(f"{app_dir}/nginx.inc", "add_header X-Included yes;\n",
                        f"{root}/nginx/{APP}.include-2e8a8d04520f"),
        allow_git_folders=True,
    )


def test_defaults(root: Path) -> None:
    site = make(root, {"NGINX_SERVER_NAME": "example.com"})
    assert site is not None
    assert (site.https_only, site.ipv4_address, site.ipv6_address, site.http_port,
            site.https_port, site.static_paths, site.catch_all, site.cache, site.allow,
            site.include, site.allow_git_folders) == (
        False, "0.0.0.0", "::", 80, 443, (), None, None, (), None, False)


def test_cache_defaults_and_path(root: Path) -> None:
    site = make(root, {"NGINX_SERVER_NAME": "a.com", "NGINX_CACHE_PREFIXES": "api"})
    assert site is not None
    assert site.cache == CacheSettings(("/api",), f"{root}/cache/{APP}")


@pytest.mark.parametrize("env", [{}, {"NGINX_SERVER_NAME": ""}, {"NGINX_SERVER_NAME": "  "},
                                 {"NGINX_HTTPS_ONLY": "1", "NGINX_STATIC_PATHS": "/x:y"}])
def test_no_server_name_no_site(root: Path, env: dict[str, str]) -> None:
    assert make(root, env) is None


def test_empty_values_mean_defaults(root: Path) -> None:
    env = {key: "" for key in KEYS} | {"DISABLE_IPV6": "", "NGINX_SERVER_NAME": "a.com"}
    assert make(root, env) == make(root, {"NGINX_SERVER_NAME": "a.com"})


@pytest.mark.parametrize(("value", "expected"), [
    ("example.com", ("example.com",)),
    ("a.com,b.com", ("a.com", "b.com")),
    (" a.com , b.com ", ("a.com", "b.com")),
    ("a.com,a.com", ("a.com",)),
    ("*.example.com", ("*.example.com",)),
    ("localhost", ("localhost",)),
    ("_", ("_",)),
    ("xn--bcher-kva.example", ("xn--bcher-kva.example",)),
    ("127.0.0.1", ("127.0.0.1",)),
])
def test_server_names_ok(value: str, expected: tuple[str, ...]) -> None:
    assert server_names("K", value) == expected


# Every attempt must fail with an EnvError naming its key, before anything is built.
INJECTIONS = [
    ("NGINX_SERVER_NAME", "example.com; include /etc/shadow"),
    ("NGINX_SERVER_NAME", "example.com}"),
    ("NGINX_SERVER_NAME", "example.com{"),
    ("NGINX_SERVER_NAME", "a.com\nlocation / {}"),
    ("NGINX_SERVER_NAME", "a.com b.com"),
    ("NGINX_SERVER_NAME", '"a.com"'),
    ("NGINX_SERVER_NAME", "a.com,"),
    ("NGINX_SERVER_NAME", "$host"),
    ("NGINX_SERVER_NAME", "a.*.com"),
    ("NGINX_SERVER_NAME", "-a.com"),
    ("NGINX_SERVER_NAME", "a" * 64 + ".com"),
    ("NGINX_STATIC_PATHS", "/static:static;deny all"),
    ("NGINX_STATIC_PATHS", "/static:../../etc"),
    ("NGINX_STATIC_PATHS", "/static:static/../../other-app"),
    ("NGINX_STATIC_PATHS", "/static:/srv/x}"),
    ("NGINX_STATIC_PATHS", "/static:/srv/$document_root"),
    ("NGINX_STATIC_PATHS", "/static:'/srv/x'"),
    ("NGINX_STATIC_PATHS", "/static:/srv/x y"),
    ("NGINX_STATIC_PATHS", "/static:/srv/x\\"),
    ("NGINX_STATIC_PATHS", "/static:/srv/#x"),
    ("NGINX_STATIC_PATHS", "/st{atic:static"),
    ("NGINX_STATIC_PATHS", "/../x:static"),
    ("NGINX_STATIC_PATHS", "static:static"),
    ("NGINX_STATIC_PATHS", "/a//b:static"),
    ("NGINX_STATIC_PATHS", "/static"),
    ("NGINX_STATIC_PATHS", "/a:x,,/b:y"),
    ("NGINX_STATIC_PATHS", "/a:x,/a/:y"),
    ("NGINX_STATIC_PATHS", "/static:static\n}"),
    ("NGINX_CATCH_ALL", "../index.html"),
    ("NGINX_CATCH_ALL", "/etc/passwd"),
    ("NGINX_CATCH_ALL", "index.html;"),
    ("NGINX_CATCH_ALL", "in dex.html"),
    ("NGINX_INCLUDE_FILE", "../../other/nginx.inc"),
    ("NGINX_INCLUDE_FILE", "/etc/nginx/nginx.conf"),
    ("NGINX_INCLUDE_FILE", "*.inc"),
    ("NGINX_INCLUDE_FILE", "nginx.inc;"),
    ("NGINX_INCLUDE_FILE", "missing.inc"),
    ("NGINX_CACHE_PREFIXES", "api;"),
    ("NGINX_CACHE_PREFIXES", "api|admin"),
    ("NGINX_CACHE_PREFIXES", "/"),
    ("NGINX_CACHE_PREFIXES", "api,,x"),
    ("NGINX_CACHE_PREFIXES", "../x"),
    ("NGINX_CACHE_PREFIXES", "a{b}"),
    ("NGINX_CACHE_PATH", "relative/cache"),
    ("NGINX_CACHE_PATH", "/var/cache/x;"),
    ("NGINX_CACHE_SIZE", "1g"),
    ("NGINX_CACHE_SIZE", "0"),
    ("NGINX_CACHE_TIME", "1h"),
    ("NGINX_CACHE_TIME", "-1"),
    ("NGINX_CACHE_REDIRECTS", "x"),
    ("NGINX_CACHE_ANY", "1;"),
    ("NGINX_CACHE_CONTROL", "public"),
    ("NGINX_CACHE_EXPIRY", "0"),
    ("NGINX_HTTPS_ONLY", "maybe"),
    ("NGINX_CLOUDFLARE_ACL", "on;"),
    ("NGINX_ALLOW_GIT_FOLDERS", "sure"),
    ("DISABLE_IPV6", "2"),
    ("NGINX_IPV4_ADDRESS", "0.0.0.0; deny all"),
    ("NGINX_IPV4_ADDRESS", "256.0.0.1"),
    ("NGINX_IPV4_ADDRESS", "::1"),
    ("NGINX_IPV6_ADDRESS", "[::]:80"),
    ("NGINX_IPV6_ADDRESS", "127.0.0.1"),
    ("NGINX_IPV6_ADDRESS", "[::] ssl"),
    ("NGINX_HTTP_PORT", "80;"),
    ("NGINX_HTTP_PORT", "0"),
    ("NGINX_HTTPS_PORT", "65536"),
    ("NGINX_HTTPS_PORT", "80"),
]


@pytest.mark.parametrize(("key", "value"), INJECTIONS)
def test_injection_refused(root: Path, key: str, value: str) -> None:
    env = {"NGINX_SERVER_NAME": "example.com", "NGINX_CACHE_PREFIXES": "api", key: value}
    with pytest.raises(EnvError) as caught:
        make(root, env)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{key}: ")


@pytest.mark.parametrize(("key", "value"), [
    *((key, value) for key, value in INJECTIONS if key != "NGINX_SERVER_NAME"),
    ("NGINX_INCLUDE_FILE", "../../../../etc/passwd"),
    ("NGINX_CACHE_PATH", "/etc"),
])
def test_checked_without_a_server_name(root: Path, key: str, value: str) -> None:
    with pytest.raises(EnvError) as caught:
        make(root, {key: value})
    assert caught.value.key == key and str(caught.value).startswith(f"{key}: ")
    assert make(root, {key: ""}) is None


@pytest.fixture
def links(root: Path) -> Path:
    """The app's folder with committed symlinks: out of the app, and within it."""
    app_dir = root / "apps" / APP
    (root / "envs" / "other").mkdir(parents=True)
    (root / "envs" / "other" / "ENV").write_text("SECRET=1\n")
    (app_dir / "dist").mkdir()
    (app_dir / "dist" / "index.html").write_text("hi\n")
    for name, target in {"etc": "/etc", "envs": "../../envs", "passwd": "/etc/passwd",
                         "secret.inc": "../../envs/other/ENV", "public": "dist",
                         "index.html": "dist/index.html", "loop": "loop"}.items():
        (app_dir / name).symlink_to(target)
    (root / "cache" / APP).mkdir(parents=True)
    (root / "cache" / APP / "etc").symlink_to("/etc")
    return app_dir


@pytest.mark.parametrize(("key", "value"), [
    ("NGINX_STATIC_PATHS", "/pub:etc"),
    ("NGINX_STATIC_PATHS", "/pub:etc/ssl"),
    ("NGINX_STATIC_PATHS", "/leak:envs"),
    ("NGINX_STATIC_PATHS", "/leak:{root}/envs"),
    ("NGINX_STATIC_PATHS", "/leak:/etc"),
    ("NGINX_STATIC_PATHS", "/l:loop"),
    ("NGINX_CATCH_ALL", "passwd"),
    ("NGINX_INCLUDE_FILE", "secret.inc"),
    ("NGINX_CACHE_PATH", "{root}/cache/" + APP + "/etc"),
    ("NGINX_CACHE_PATH", "{root}/cache/other"),
    ("NGINX_CACHE_PATH", "{root}/envs"),
])
@pytest.mark.parametrize("server_name", ["", "example.com"])
def test_paths_must_resolve_inside_the_app(root: Path, links: Path, key: str, value: str,
                                           server_name: str) -> None:
    with pytest.raises(EnvError) as caught:
        make(root, {"NGINX_SERVER_NAME": server_name, key: value})
    assert caught.value.key == key and str(caught.value).startswith(f"{key}: ")


def test_procfile_static_must_resolve_inside_the_app(root: Path, links: Path) -> None:
    for value in ("etc", "/pub:etc", "/leak:envs"):
        with pytest.raises(ProcfileError, match="static: .*outside"):
            make(root, {}, static=value)


def test_links_within_the_app_give_their_real_path(root: Path, links: Path) -> None:
    site = make(root, {"NGINX_SERVER_NAME": "a.com", "NGINX_STATIC_PATHS": "/p:public",
                       "NGINX_CATCH_ALL": "index.html"}, static="/assets:./public/")
    assert site is not None
    assert site.static_paths == (StaticPath("/assets/", f"{links}/dist/"),
                                 StaticPath("/p/", f"{links}/dist/"))
    assert site.catch_all == f"{links}/dist/index.html"


@pytest.mark.parametrize("value", ["/x:y;", "../up", "/a:b,/a:c", "/:"])
def test_procfile_static_refused(root: Path, value: str) -> None:
    with pytest.raises(ProcfileError, match="static: "):
        make(root, {"NGINX_SERVER_NAME": "a.com"}, static=value)


def test_procfile_static_first_and_not_twice(root: Path) -> None:
    site = make(root, {"NGINX_SERVER_NAME": "a.com", "NGINX_STATIC_PATHS": "/media:static"},
                static="/assets:public")
    assert site is not None
    assert [s.url for s in site.static_paths] == ["/assets/", "/media/"]
    with pytest.raises(EnvError) as caught:
        make(root, {"NGINX_SERVER_NAME": "a.com", "NGINX_STATIC_PATHS": "/:other"},
             static="public")
    assert caught.value.key == "NGINX_STATIC_PATHS"


@pytest.mark.parametrize(("value", "path"), [
    ("/s:static", "static/"),
    ("/s:./static/", "static/"),
    ("/s:static/../static", "static/"),
    ("/s:.", ""),
])
def test_static_relative_paths_stay_in_app(root: Path, value: str, path: str) -> None:
    site = make(root, {"NGINX_SERVER_NAME": "a.com", "NGINX_STATIC_PATHS": value})
    assert site is not None
    assert site.static_paths == (StaticPath("/s/", f"{root}/apps/{APP}/{path}"),)


@pytest.mark.parametrize("upstream", ["0.0.0.0:80", "10.0.0.1:5000", "127.0.0.1:0",
                                      "127.0.0.1:70000", "unix:relative.sock",
                                      "unix:/a b.sock", "unix:/a;b", "http://127.0.0.1:1"])
def test_bad_upstream_is_a_bug(root: Path, upstream: str) -> None:
    with pytest.raises(ValueError):
        make(root, {"NGINX_SERVER_NAME": "a.com"}, (upstream,))


@pytest.mark.parametrize("upstream", ["127.0.0.1:1", "[::1]:8000", "localhost:65535",
                                      "unix:/tmp/pk/nginx/app.web.sock"])
def test_good_upstreams(root: Path, upstream: str) -> None:
    site = make(root, {"NGINX_SERVER_NAME": "a.com"}, (upstream,))
    assert site is not None and site.upstreams == (upstream,)


def test_unknown_keys() -> None:
    env = {"NGINX_SERVER_NAME": "a", "NGINX_HTTPS_ONY": "1", "NGINX_CACHE_TIMES": "2", "PATH": "/"}
    assert unknown_keys(env) == ["NGINX_CACHE_TIMES", "NGINX_HTTPS_ONY"]


@pytest.mark.parametrize(("env", "warnings"), [
    ({"NGINX_SERVER_NAME": "a", "DISABLE_IPV6": "1", "NGINX": "x", "MY_NGINX_X": "y"}, []),
    ({"NGINX_HTTPS_ONY": "1"}, ["NGINX_HTTPS_ONY is not an nginx setting pikud knows; "
                                "it is ignored (did you mean NGINX_HTTPS_ONLY?)"]),
    ({"NGINX_SERVERNAME": "a", "NGINX_WORKERS": "4"}, [
        "NGINX_SERVERNAME is not an nginx setting pikud knows; it is ignored "
        "(did you mean NGINX_SERVER_NAME?)",
        "NGINX_WORKERS is not an nginx setting pikud knows; it is ignored"]),
])
def test_unknown_key_warnings(env: dict[str, str], warnings: list[str]) -> None:
    assert unknown_key_warnings(env) == warnings


@pytest.mark.parametrize(("app", "name"), [
    ("web", "pikud_web"),
    ("my_app", "pikud_my_app"),
    ("app2", "pikud_app2"),
])
def test_nginx_name_plain(app: str, name: str) -> None:
    assert nginx_name(app) == name


def test_nginx_name_unique() -> None:
    apps = ["my-app", "my_app", "my.app", "My_app", "MY-APP"]
    names = {nginx_name(app) for app in apps}
    assert len(names) == len(apps)
    assert all(name.startswith("pikud_my_app") for name in names)


@pytest.mark.parametrize("bad", ['a"b', "a\\b", "$x", "a\nb"])
def test_quote_refuses_what_it_cannot_quote(bad: str) -> None:
    with pytest.raises(ValueError):
        quote(bad)


def test_quote() -> None:
    assert quote("/home/my user/.piku") == '"/home/my user/.piku"'


def test_render_refuses_unknown_http2_style(root: Path) -> None:
    site = make(root, {"NGINX_SERVER_NAME": "a.com"})
    assert site is not None
    with pytest.raises(ValueError):
        render(site, http2_style="yes")  # type: ignore[arg-type]


def test_cloudflare_ranges(tmp_path: Path) -> None:
    bundled = cloudflare_ranges()
    assert "173.245.48.0/20" in bundled and "2606:4700::/32" in bundled
    override = tmp_path / "cf.txt"
    override.write_text("# fresh\n10.0.0.0/8\n\n2001:db8::/32  # test\n")
    assert cloudflare_ranges(override) == ("10.0.0.0/8", "2001:db8::/32")
    assert cloudflare_ranges(tmp_path / "missing") == bundled


def test_cloudflare_override_in_state_dir(root: Path) -> None:
    (root / "pikud").mkdir()
    (root / "pikud" / "cloudflare_ips.txt").write_text("198.51.100.0/24\n")
    site = make(root, {"NGINX_SERVER_NAME": "a.com", "NGINX_CLOUDFLARE_ACL": "1"})
    assert site is not None and site.allow == ("198.51.100.0/24",)
