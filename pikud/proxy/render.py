"""The text of ``nginx/APP.conf`` for a validated ``NginxSite``. Pure.

``render()`` fills the package's jinja2 templates (``StrictUndefined``, every
string through the quoting filter ``q``); it reads nothing and writes nothing
(``nginx.Nginx`` tests and installs the result). Apart from ``site.py``, which
builds the site from NGINX_* settings, so each is tested on its own: the
settings by tables, the text by golden files.
"""

# Design notes:
# - Names that live at nginx's http level (the upstream, the websocket map
#   variable, the cache zone) must be unique across every app's config, so each
#   app's are derived from its name by nginx_name(): [a-z0-9_] only, plus a hash
#   of the real name when it had to change, so "my-app" and "my_app" differ.
#   The websocket map is per app for the same reason: each config stands alone
#   and needs nothing from nginx.conf or another app.
# - Upstream servers get max_fails=0: they are local sockets, so a refused
#   connection costs microseconds and nginx moves on (proxy_next_upstream),
#   instead of marking a restarting process down for 10 s.
# - The ACME location uses `root`, not `alias`, so only
#   .well-known/acme-challenge/* under acme/APP is reachable, even where piku's
#   layout made acme/APP a link to the folder holding the private key.

from __future__ import annotations

import posixpath
import re
from functools import cache
from typing import TYPE_CHECKING, Literal

from pikud.digest import sha256
from pikud.proxy.site import NginxSite

if TYPE_CHECKING:
    import jinja2

Http2Style = Literal["on", "listen", "off"]
"""``http2 on;`` (nginx >= 1.25.1), ``listen … ssl http2`` (older), or no HTTP/2."""


def nginx_name(app: str) -> str:
    """``pikud_<app>`` made of [a-z0-9_], unique per app name (see the design notes)."""
    name = re.sub(r"[^a-z0-9_]", "_", app.lower())
    if name != app:
        name += "_" + sha256(app.encode()).hex()[:8]
    return f"pikud_{name}"


def quote(value: object) -> str:
    """A double-quoted nginx string; refuses what quoting cannot neutralize (a bug upstream)."""
    text = str(value)
    bad = next((c for c in text if c in '"\\$' or not c.isprintable()), None)
    if bad is not None:
        raise ValueError(f"refusing to write {text!r} into an nginx config ({bad!r})")
    return f'"{text}"'


@cache
def _templates() -> jinja2.Environment:
    import jinja2  # here: only a daemon that writes nginx sites pays its import (issue #16)
    env = jinja2.Environment(loader=jinja2.PackageLoader("pikud.proxy", "templates"),
                             undefined=jinja2.StrictUndefined, autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["q"] = quote
    return env


def render(site: NginxSite, *, http2_style: Http2Style = "listen") -> str:
    """The text of ``nginx/APP.conf`` for ``site``."""
    if http2_style not in ("on", "listen", "off"):
        raise ValueError(f"http2_style must be on, listen or off, not {http2_style!r}")
    catch_all = None
    if site.catch_all is not None:
        folder, name = posixpath.split(site.catch_all)
        catch_all = {"root": folder, "file": "/" + name}
    ssl = " ssl http2" if http2_style == "listen" else " ssl"
    addresses = [site.ipv4_address] + ([] if site.ipv6_address is None
                                       else [f"[{site.ipv6_address}]"])
    serves_root = any(static.url == "/" for static in site.static_paths)
    return _templates().get_template("site.conf.j2").render(
        site=site, name=nginx_name(site.app), http2_style=http2_style, catch_all=catch_all,
        listen_http=[f"{address}:{site.http_port}" for address in addresses],
        listen_https=[f"{address}:{site.https_port}{ssl}" for address in addresses],
        proxy_root=bool(site.upstreams) and not serves_root, serves_root=serves_root,
    )
