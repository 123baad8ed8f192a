"""Where an app's requests go: the front (built-in router or nginx) pointed at its web processes.

``publish()`` is called whenever the set of an app's web processes changes:
after a generation switch (before the old one stops), after a scale, and
with no upstreams when the app stops. The router switches in one step, so a
request is never sent to a process that is not ready yet. Once an nginx site
is live, acme.sh is asked for its certificate in the background.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from pikud import identity
from pikud.appspec import STATIC_KIND, WEB_KINDS, AppSpec
from pikud.errors import EnvError
from pikud.nginxaccess import Blocked, fix_all, sockets_blocked
from pikud.paths import Paths
from pikud.procman.process import ProcessSpec
from pikud.proxy.acme import Acme, root_ca
from pikud.proxy.locations import StaticPath, procfile_static, static_paths
from pikud.proxy.nginx import Nginx, access_problems
from pikud.proxy.routing import Route
from pikud.proxy.site import Include, NginxSite, server_names, site_from_env

if TYPE_CHECKING:       # the router (and aiohttp) is imported only by a daemon that runs it
    from pikud.proxy.router import Router

log = logging.getLogger(__name__)


def upstreams(processes: Iterable[ProcessSpec]) -> tuple[str, ...]:
    """``unix:PATH`` or ``127.0.0.1:PORT`` of each web process, in slot order."""
    return tuple(upstream for spec in sorted(processes, key=lambda s: (s.kind, s.index))
                 if (upstream := spec.upstream) is not None)


def route_for(app: str, spec: AppSpec, source: Path,
              processes: Iterable[ProcessSpec]) -> Route:
    """The router's entry for an app: its host names, web processes and static folders."""
    hosts: tuple[str, ...] = ()
    if spec.env.get("NGINX_SERVER_NAME", "").strip():
        hosts = server_names("NGINX_SERVER_NAME", spec.env["NGINX_SERVER_NAME"])
    static: list[StaticPath] = []
    if STATIC_KIND in spec.procfile.entries:
        static += procfile_static(spec.procfile.entries[STATIC_KIND], source)
    if spec.env.get("NGINX_STATIC_PATHS", "").strip():
        static += static_paths(lambda reason: EnvError(f"NGINX_STATIC_PATHS: {reason}",
                                                       key="NGINX_STATIC_PATHS"),
                               spec.env["NGINX_STATIC_PATHS"], source)
    return Route(app, hosts, upstreams(processes),
                 tuple((item.url.rstrip("/") or "/", Path(item.path)) for item in static))


class Traffic:
    """The front an app's requests come through: the built-in router, or nginx."""

    def __init__(self, router: Router | None, nginx: Nginx | None = None,
                 paths: Paths | None = None, acme: Acme | None = None) -> None:
        self.router, self.nginx, self.paths, self.acme = router, nginx, paths, acme

    def _site(self, app: str, spec: AppSpec, source: Path,
              addresses: tuple[str, ...]) -> NginxSite | None:
        assert self.paths is not None
        return site_from_env(app, spec.env, addresses, self.paths, source,
                             static=spec.procfile.entries.get(STATIC_KIND))

    def check(self, app: str, spec: AppSpec, source: Path) -> None:
        """Raise (naming the key) if the app's routing settings are bad; nothing changes.

        Every NGINX_* value is checked whichever front serves the app.
        """
        route_for(app, spec, source, ())
        if self.paths is not None:
            self._site(app, spec, source, ("127.0.0.1:1",))
        if self.nginx is not None:
            root_ca(spec.env)

    def include(self, app: str, spec: AppSpec, source: Path) -> Include | None:
        """The NGINX_INCLUDE_FILE ``spec`` puts live with a server name (whichever front
        serves now: an include must not go live unasked once nginx does)."""
        if self.paths is None:
            return None
        site = self._site(app, spec, source, ("127.0.0.1:1",))
        return site.include if site is not None else None

    async def sockets_blocked(self, app: str) -> str | None:
        """Why nginx's workers cannot connect to ``app``'s unix sockets (advice), or None:
        the common sockets folder, and under app users the app's own folder in it.

        The router is pikud itself and always can. pikud running as root gives
        the folders nginx's group itself, as `piku setup --fix` would.
        """
        if self.nginx is None or self.paths is None:
            return None
        user = await self.nginx.worker_user()
        found = self._sockets_blocked(app, user)
        if found and os.geteuid() == 0:
            fix_all(found)
            found = self._sockets_blocked(app, user)
        return found[0].advice() if found else None

    def _sockets_blocked(self, app: str, user: str) -> list[Blocked]:
        assert self.paths is not None
        common = self.paths.sockets
        own = identity.current().socket_folder(self.paths, app)
        return sockets_blocked(common, user) or (
            sockets_blocked(own, user) if own != common else [])

    async def publish(self, app: str, spec: AppSpec, source: Path,
                      processes: Mapping[str, ProcessSpec]) -> list[str] | None:
        """Send the app's traffic to ``processes`` (their web ones), in one step.

        Returns what nginx's workers could not reach for the site, as advice
        (``access_problems``): nginx takes such a config, then answers 403 or 502.
        None when no nginx site was put live.
        """
        if self.router is not None:
            self.router.set_route(route_for(app, spec, source, processes.values()))
        if self.nginx is not None:
            addresses = upstreams(processes.values())
            has_web = any(kind in WEB_KINDS for kind in spec.procfile.entries)
            site = self._site(app, spec, source, addresses)
            if site is not None and (addresses or not has_web):
                await self.nginx.apply(site)
                if self.acme is not None:
                    self.acme.request(site, root_ca(spec.env))
                return access_problems(site, await self.nginx.worker_user())
        return None

    async def withdraw(self, app: str) -> None:
        if self.router is not None:
            self.router.remove(app)
        if self.acme is not None:
            await self.acme.forget(app)
        if self.nginx is not None:
            await self.nginx.remove(app)
