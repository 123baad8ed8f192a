"""One app's nginx site: read from its NGINX_* settings and validated. Pure.

``site_from_env()`` turns piku's NGINX_* settings into a frozen ``NginxSite``;
every value that reaches the config is checked first, and a value that could
inject nginx syntax (``;``, braces, quotes, ``$``, whitespace, ``..`` leaving
the app) is an ``EnvError`` naming the key. The static folders are checked by
``locations.py``; ``render.render()`` turns the site into the text of
``nginx/APP.conf``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pikud import identity
from pikud.convert import boolean, nonneg_int, positive_int
from pikud.digest import sha256
from pikud.errors import EnvError
from pikud.paths import Paths
from pikud.proxy.locations import (
    StaticPath,
    local_path,
    procfile_static,
    static_paths,
    unsafe_char,
    url_prefix,
)

KEYS = frozenset({
    "NGINX_SERVER_NAME", "NGINX_HTTPS_ONLY", "NGINX_STATIC_PATHS", "NGINX_CATCH_ALL",
    "NGINX_CACHE_PREFIXES", "NGINX_CACHE_SIZE", "NGINX_CACHE_TIME", "NGINX_CACHE_REDIRECTS",
    "NGINX_CACHE_ANY", "NGINX_CACHE_CONTROL", "NGINX_CACHE_EXPIRY", "NGINX_CACHE_PATH",
    "NGINX_CLOUDFLARE_ACL", "NGINX_INCLUDE_FILE", "NGINX_ALLOW_GIT_FOLDERS",
    "NGINX_IPV4_ADDRESS", "NGINX_IPV6_ADDRESS", "NGINX_HTTP_PORT", "NGINX_HTTPS_PORT",
})
"""The NGINX_* settings pikud reads (DISABLE_IPV6 too, which has no prefix)."""

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?:\*\.)?{_LABEL}(?:\.{_LABEL})*")
MAX_INCLUDE = 1024 * 1024
_UPSTREAM_PORT = re.compile(r"(127\.[0-9.]+|\[[0-9A-Fa-f:.]+\]|localhost):([0-9]{1,5})")


@dataclass(frozen=True)
class CacheSettings:
    """The NGINX_CACHE_* family; only rendered when there are prefixes and upstreams."""

    prefixes: tuple[str, ...]
    path: str
    size_gb: int = 1
    content_time: int = 3600    # NGINX_CACHE_TIME: 200 and 304 answers
    redirect_time: int = 3600   # NGINX_CACHE_REDIRECTS: 301, 302, 307, 308
    any_time: int = 3600        # NGINX_CACHE_ANY: every other status
    max_age: int = 3600         # NGINX_CACHE_CONTROL: Cache-Control sent to clients
    inactive: int = 86400       # NGINX_CACHE_EXPIRY: unused entries are dropped after


@dataclass(frozen=True)
class Include:
    """NGINX_INCLUDE_FILE: read at deploy, installed as ``copy`` next to the config.

    The config includes the copy, not the app's file, so it stays exactly what
    ``nginx -t`` accepted: a later edit, release or rollback of the app cannot
    break the next reload of nginx. The copy's name carries a hash of the text.
    """

    source: str     # the file in the app, for messages
    text: str
    copy: str       # nginx/APP.include-HASH


@dataclass(frozen=True)
class NginxSite:
    """Everything ``nginx/APP.conf`` says, validated; built by ``site_from_env``."""

    app: str
    server_names: tuple[str, ...]
    upstreams: tuple[str, ...]          # "127.0.0.1:PORT" or "unix:/abs/path.sock"
    certificate: str                    # nginx/APP.crt
    certificate_key: str                # nginx/APP.key
    acme_root: str                      # acme/APP: tokens under .well-known/acme-challenge/
    https_only: bool = False
    ipv4_address: str = "0.0.0.0"
    ipv6_address: str | None = "::"     # None: DISABLE_IPV6
    http_port: int = 80
    https_port: int = 443
    static_paths: tuple[StaticPath, ...] = ()
    catch_all: str | None = None        # absolute file, served for unmatched static paths
    cache: CacheSettings | None = None
    allow: tuple[str, ...] = ()         # NGINX_CLOUDFLARE_ACL: allowed networks, then deny all
    include: Include | None = None      # NGINX_INCLUDE_FILE, included inside server {}
    allow_git_folders: bool = False


# --- validators: (key or error factory, value) -> clean value, or raise ---------
def _refuse(key: str, reason: str, value: str) -> EnvError:
    return EnvError(f"{key}: {reason}: {value!r}", key=key)


def server_names(key: str, value: str) -> tuple[str, ...]:
    """Comma-separated host names; ``*.example.com`` wildcards allowed."""
    names: list[str] = []
    for item in value.split(","):
        name = item.strip(" ")
        if not name:
            raise _refuse(key, "expected comma-separated host names, found an empty one", value)
        if len(name) > 253 or not _HOSTNAME.fullmatch(name):
            raise _refuse(key, f"{name!r} is not a host name (or *.domain wildcard)", value)
        if name not in names:
            names.append(name)
    return tuple(names)


def _port(key: str, value: str) -> int:
    port = positive_int(key, value)
    if port > 65535:
        raise _refuse(key, "expected a port from 1 to 65535", value)
    return port


def _ipv4(key: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value.strip()))
    except ValueError:
        raise _refuse(key, "expected an IPv4 address such as 0.0.0.0", value) from None


def _ipv6(key: str, value: str) -> str:
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return ipaddress.IPv6Address(text).compressed
    except ValueError:
        raise _refuse(key, "expected an IPv6 address such as [::]", value) from None


def _upstream(server: str) -> str:
    """Upstreams come from pikud itself, so a bad one is a bug: ValueError."""
    if server.startswith("unix:/") and unsafe_char(server) is None:
        return server
    match = _UPSTREAM_PORT.fullmatch(server)
    if match and 1 <= int(match.group(2)) <= 65535:
        return server
    raise ValueError(f"not a loopback upstream (HOST:PORT or unix:/path): {server!r}")


def cloudflare_ranges(override: Path | None = None) -> tuple[str, ...]:
    """Cloudflare's networks: ``override`` when that file exists, else the bundled list."""
    if override is not None and override.is_file():
        text = override.read_text(encoding="utf-8")
    else:
        # imported on first use (an app behind Cloudflare): the resting daemon stays light
        from importlib import resources
        text = resources.files("pikud.proxy").joinpath("cloudflare_ips.txt").read_text("utf-8")
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return tuple(str(ipaddress.ip_network(line)) for line in lines if line)


# --- the site -------------------------------------------------------------------
def _cache(env: Mapping[str, str], paths: Paths, app: str) -> CacheSettings | None:
    """Every NGINX_CACHE_* value is checked even when no prefix makes it used."""
    def fail(reason: str) -> EnvError:
        return EnvError(f"NGINX_CACHE_PREFIXES: {reason}", key="NGINX_CACHE_PREFIXES")

    prefixes: list[str] = []
    value = env.get("NGINX_CACHE_PREFIXES", "").strip(" ")
    for item in (part.strip(" ") for part in value.split(",")) if value else ():
        prefix = url_prefix(fail, item if item.startswith("/") else "/" + item)
        if prefix == "/":
            raise fail("'/' would cache the whole site; list URL prefixes")
        if prefix not in prefixes:
            prefixes.append(prefix)
    base = identity.current().nginx_cache(paths, app)
    path = str(base)
    if env.get("NGINX_CACHE_PATH", "").strip():
        path = env["NGINX_CACHE_PATH"].strip()
        if not path.startswith("/"):
            raise _refuse("NGINX_CACHE_PATH", "expected an absolute path", path)
        path = local_path(lambda reason: EnvError(f"NGINX_CACHE_PATH: {reason}",
                                                  key="NGINX_CACHE_PATH"),
                          path, base, absolute=True)

    def number(key: str, default: int, convert: Callable[[str, str], int] = nonneg_int) -> int:
        return convert(key, env[key]) if env.get(key, "").strip() else default

    settings = CacheSettings(
        tuple(prefixes), path,
        size_gb=number("NGINX_CACHE_SIZE", 1, positive_int),
        content_time=number("NGINX_CACHE_TIME", 3600),
        redirect_time=number("NGINX_CACHE_REDIRECTS", 3600),
        any_time=number("NGINX_CACHE_ANY", 3600),
        max_age=number("NGINX_CACHE_CONTROL", 3600),
        inactive=number("NGINX_CACHE_EXPIRY", 86400, positive_int),
    )
    return settings if prefixes else None


def _include(value: str, app_dir: Path, prefix: Path) -> Include:
    key = "NGINX_INCLUDE_FILE"
    source = local_path(lambda reason: EnvError(f"{key}: {reason}", key=key), value, app_dir,
                        absolute=False)
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise _refuse(key, f"cannot read it ({exc.strerror})", value) from None
    if len(data) > MAX_INCLUDE:
        raise _refuse(key, f"larger than {MAX_INCLUDE // 1024} KiB", value)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(key, "not UTF-8 text", value) from None
    digest = sha256(data).hex()[:12]
    return Include(source, text, f"{prefix}.include-{digest}")


def site_from_env(app: str, env: Mapping[str, str], upstreams: Sequence[str], paths: Paths,
                  app_dir: Path, *, static: str | None = None, deployer_ip: str | None = None,
                  ) -> NginxSite | None:
    """The app's site, or None when NGINX_SERVER_NAME is unset or empty (no nginx config).

    ``upstreams`` has one entry per web-facing process; ``static`` is the
    Procfile's ``static:`` entry, served before NGINX_STATIC_PATHS (as piku
    does); ``deployer_ip`` is added to NGINX_CLOUDFLARE_ACL's allow list.
    An empty value of any other key means its default. Every value is
    checked even when there is no server name, so a bad one is refused when
    it is set, not when a server name later puts it to use. Raises
    ``EnvError`` naming the key (``ProcfileError`` for ``static``).
    """
    for key in sorted(KEYS | {"DISABLE_IPV6"}):
        if any(char in env.get(key, "") for char in "\r\n\x00"):
            raise _refuse(key, "must be one line", env[key])

    def given(key: str) -> str | None:
        return env[key] if env.get(key, "").strip() else None

    def flag(key: str) -> bool:
        value = given(key)
        return boolean(key, value) if value is not None else False

    def fail_for(key: str) -> Callable[[str], EnvError]:
        return lambda reason: EnvError(f"{key}: {reason}", key=key)

    server = given("NGINX_SERVER_NAME")
    names = server_names("NGINX_SERVER_NAME", server) if server is not None else ()
    statics = procfile_static(static, app_dir) if static and static.strip() else ()
    value = given("NGINX_STATIC_PATHS")
    if value is not None:
        extra = static_paths(fail_for("NGINX_STATIC_PATHS"), value, app_dir)
        taken = {item.url for item in statics}
        for item in extra:
            if item.url in taken:
                raise _refuse("NGINX_STATIC_PATHS", "URL already served by the Procfile's "
                              f"static entry: {item.url}", value)
        statics += extra
    catch_all = given("NGINX_CATCH_ALL")
    if catch_all is not None:
        catch_all = local_path(fail_for("NGINX_CATCH_ALL"), catch_all.strip(), app_dir,
                               absolute=False)
    include = None
    if given("NGINX_INCLUDE_FILE") is not None:
        include = _include(env["NGINX_INCLUDE_FILE"].strip(), app_dir, paths.nginx() / app)
    allow: tuple[str, ...] = ()
    if flag("NGINX_CLOUDFLARE_ACL"):
        allow = cloudflare_ranges(paths.cloudflare_ips)
        if deployer_ip:
            allow += (str(ipaddress.ip_address(deployer_ip)),)
    ipv4, ipv6 = given("NGINX_IPV4_ADDRESS"), given("NGINX_IPV6_ADDRESS")
    ipv6_address = _ipv6("NGINX_IPV6_ADDRESS", ipv6) if ipv6 else "::"
    http_port, https_port = given("NGINX_HTTP_PORT"), given("NGINX_HTTPS_PORT")
    site = NginxSite(
        app=app,
        server_names=names,
        upstreams=tuple(_upstream(server) for server in upstreams),
        certificate=str(paths.nginx() / f"{app}.crt"),
        certificate_key=str(paths.nginx() / f"{app}.key"),
        acme_root=str(paths.root / "acme" / app),
        https_only=flag("NGINX_HTTPS_ONLY"),
        ipv4_address=_ipv4("NGINX_IPV4_ADDRESS", ipv4) if ipv4 else "0.0.0.0",
        ipv6_address=None if flag("DISABLE_IPV6") else ipv6_address,
        http_port=_port("NGINX_HTTP_PORT", http_port) if http_port else 80,
        https_port=_port("NGINX_HTTPS_PORT", https_port) if https_port else 443,
        static_paths=statics,
        catch_all=catch_all,
        cache=_cache(env, paths, app),
        allow=allow,
        include=include,
        allow_git_folders=flag("NGINX_ALLOW_GIT_FOLDERS"),
    )
    if site.http_port == site.https_port:
        raise _refuse("NGINX_HTTPS_PORT", "must differ from NGINX_HTTP_PORT", str(site.https_port))
    return site if names else None


def unknown_keys(env: Mapping[str, str]) -> list[str]:
    """NGINX_* keys pikud does not know (typos), for the deploy to report."""
    return sorted(key for key in env if key.startswith("NGINX_") and key not in KEYS)


def unknown_key_warnings(env: Mapping[str, str]) -> list[str]:
    """A warning for each unknown NGINX_* key, naming the known key it most resembles.

    A warning, not a refusal: piku ignores keys it does not read, and an ENV
    written for a later piku (or for the app itself) must still deploy.
    """
    unknown = unknown_keys(env)
    if not unknown:
        return []
    import difflib  # imported on first use (an unknown key): the daemon stays light; see README
    warnings = []
    for key in unknown:
        near = difflib.get_close_matches(key, sorted(KEYS), n=1, cutoff=0.8)
        hint = f" (did you mean {near[0]}?)" if near else ""
        warnings.append(f"{key} is not an nginx setting pikud knows; it is ignored{hint}")
    return warnings


