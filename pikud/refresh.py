"""Refreshing Cloudflare's ranges: on request (`piku cloudflare:refresh`) and on a timer.

``CloudflareRefresh.refresh()`` downloads the lists (proxy/cloudflare.py),
and only when every list is valid and the ranges differ from those in use
writes ``$PIKU_ROOT/pikud/cloudflare_ips.txt`` atomically, then re-publishes
the nginx site of every running app that sets NGINX_CLOUDFLARE_ACL, through
the same path a deploy takes (render, ``nginx -t``, reload). ``run()`` is the
automatic refresh: one timer, ``cloudflare_refresh_days`` apart.
"""

# Design notes:
# - Why refresh automatically: the ACL fails closed. When Cloudflare adds a
#   range, a stale list turns away the visitors Cloudflare sends from it, so
#   the site breaks with nobody having changed anything. A timer a week apart
#   costs one wakeup a week; it downloads only while a running app uses the
#   ACL behind nginx, so a server that does not use it never talks to
#   Cloudflare. A failure is logged and the list in force stays.
# - When: a week after the installed list was written (its mtime), so daemon
#   restarts do not postpone it forever; a week after start when there is
#   none (the bundled list); then a week after each attempt. An unchanged
#   list is not rewritten, so its mtime stays and a restarted daemon checks
#   again soon after it boots, which is harmless.
# - A stopped app is not re-published: its site points at processes that are
#   gone, and it is rendered afresh, with the new ranges, when it starts.
# - An app whose re-publish fails (nginx refused it, the reload failed) keeps
#   its previous config and is reported; the others still get the new ranges.

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pikud.app import App
from pikud.appspec import AppSpec
from pikud.atomic import write_atomic
from pikud.convert import boolean
from pikud.errors import PikudError, SpecError
from pikud.proxy.cloudflare import fetch, format_file, merged
from pikud.proxy.site import cloudflare_ranges
from pikud.registry import AppRegistry

log = logging.getLogger(__name__)

DAY = 86400.0


def uses_acl(spec: AppSpec) -> bool:
    """Whether the app has an nginx site with NGINX_CLOUDFLARE_ACL on."""
    env = spec.env
    if not env.get("NGINX_SERVER_NAME", "").strip():
        return False
    value = env.get("NGINX_CLOUDFLARE_ACL", "").strip()
    try:
        return bool(value) and boolean("NGINX_CLOUDFLARE_ACL", value)
    except SpecError:
        return False        # refused at deploy already; such an app has no site


def _in_use(path: Path) -> tuple[str, ...] | None:
    """The ranges sites get now; None when a hand edit broke the file (any list replaces it)."""
    try:
        return cloudflare_ranges(path)
    except (OSError, ValueError):
        return None


def _families(ranges: Sequence[str]) -> dict[str, int]:
    v6 = sum(1 for network in ranges if ":" in network)
    return {"ipv4": len(ranges) - v6, "ipv6": v6}


class CloudflareRefresh:
    """Downloads Cloudflare's lists into the daemon's copy and re-publishes the sites using it."""

    def __init__(self, registry: AppRegistry, urls: Sequence[str], every_days: float) -> None:
        self.registry = registry
        self.urls = tuple(urls)
        self.every = every_days * DAY
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._started = time.time()
        self._checked: float | None = None

    def configure(self, urls: Sequence[str], every_days: float) -> None:
        """New settings (SIGHUP); the timer is set again from them."""
        self.urls, self.every = tuple(urls), every_days * DAY
        self._wake.set()

    def _users(self) -> list[App]:
        """The known apps whose site uses the ACL (none without nginx), by name."""
        if self.registry.traffic.nginx is None:
            return []
        return [app for _, app in sorted(self.registry.apps.items())
                if app.spec is not None and uses_acl(app.spec)]

    async def refresh(self) -> dict[str, Any]:
        """Download, check, write if changed, re-publish; CloudflareError changes nothing.

        Returns ``{"changed", "file", "ranges", "ipv4", "ipv6", "sources": [{"url",
        "ranges"}], "nginx", "apps": [{"name", "site", "error"}]}``, where ``site``
        is "updated", "failed" (``error`` says why) or "not running".
        """
        async with self._lock:
            self._checked = time.time()
            self._wake.set()                # the timer counts from this check
            path = self.registry.paths.cloudflare_ips
            lists = await fetch(self.urls)
            ranges = merged(lists)
            result: dict[str, Any] = {
                "changed": ranges != _in_use(path), "file": str(path),
                "ranges": len(ranges), **_families(ranges),
                "sources": [{"url": item.url, "ranges": len(item.ranges)} for item in lists],
                "nginx": self.registry.traffic.nginx is not None, "apps": []}
            if not result["changed"]:
                log.info("cloudflare: %d ranges, unchanged; nothing touched", len(ranges))
                return result
            from datetime import datetime  # imported on first use: see README
            write_atomic(path, format_file(lists, datetime.now()), 0o600)
            log.info("cloudflare: %d ranges written to %s", len(ranges), path)
            result["apps"] = [await self._republish(app) for app in self._users()]
            return result

    async def _republish(self, app: App) -> dict[str, Any]:
        """The app's site again, from its current spec and processes, under its lock."""
        try:
            if not await app.republish():
                return {"name": app.name, "site": "not running", "error": None}
        except PikudError as exc:
            app.note("error", f"{app.name}: Cloudflare's new ranges are not live, the "
                     f"previous site stays: {exc}", logging.ERROR)
            return {"name": app.name, "site": "failed", "error": str(exc)}
        app.note("nginx", f"{app.name}: nginx site re-published with Cloudflare's new ranges")
        return {"name": app.name, "site": "updated", "error": None}

    def _due(self) -> float:
        """When the next automatic refresh is due (design notes)."""
        if self._checked is not None:
            return self._checked + self.every
        try:
            written = self.registry.paths.cloudflare_ips.stat().st_mtime
        except FileNotFoundError:
            written = self._started
        return written + self.every

    async def run(self) -> None:
        """The automatic refresh, until cancelled: one timer, no polling; off when every is 0."""
        while True:
            self._wake.clear()
            delay = max(0.0, self._due() - time.time()) if self.every else None
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                continue                    # new settings, or a refresh on request
            except TimeoutError:
                pass
            await self._automatic()

    async def _automatic(self) -> None:
        self._checked = time.time()
        if not any(app.running for app in self._users()):
            log.debug("cloudflare: no running app uses NGINX_CLOUDFLARE_ACL; not refreshing")
            return
        try:
            result = await self.refresh()
        except PikudError as exc:
            log.warning("cloudflare: automatic refresh failed, the list in force stays: %s", exc)
            return
        except Exception:
            log.exception("cloudflare: automatic refresh failed, the list in force stays")
            return
        if result["changed"]:
            updated = [entry["name"] for entry in result["apps"] if entry["site"] == "updated"]
            log.info("cloudflare: automatic refresh: %d ranges; sites updated: %s",
                     result["ranges"], ", ".join(updated) or "none")
