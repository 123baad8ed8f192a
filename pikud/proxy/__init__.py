"""The web front: nginx sites (site.py, locations.py and render.py pure, nginx.py effects),
their certificates (tls.py self-signed, acme.py from acme.sh) and the built-in router."""

from pikud.proxy.acme import Acme, root_ca
from pikud.proxy.nginx import DEFAULT_RELOAD_COMMAND, DEFAULT_TEST_COMMAND, Nginx, access_problems
from pikud.proxy.render import render
from pikud.proxy.site import NginxSite, site_from_env, unknown_key_warnings, unknown_keys
from pikud.proxy.tls import ensure_certificate

__all__ = ["DEFAULT_RELOAD_COMMAND", "DEFAULT_TEST_COMMAND", "Acme", "Nginx", "NginxSite",
           "access_problems", "ensure_certificate", "render", "root_ca", "site_from_env",
           "unknown_key_warnings", "unknown_keys"]
