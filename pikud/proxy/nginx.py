"""Putting nginx sites live: test the full candidate set, write atomically, reload.

``Nginx.apply(site)`` renders the site, asks nginx whether it accepts it
together with every other app's current config, and only then replaces
``nginx/APP.conf`` and reloads nginx. A refused config changes nothing: the
previous file stays (or none, on a first deploy) and ``NginxError`` carries
nginx's own message. Applies are serialized, so two apps' new configs are
never each tested without the other.
"""

# Design notes:
# - How the candidate set is tested. The candidate goes to nginx/.APP.candidate
#   and a main config to nginx/.APP.test-main (dot files ending in neither
#   .conf, so the live `include nginx/*.conf` never sees them):
#       events {}  http { include <every other *.conf>; include <candidate>; }
#   and the test command gets `-t -c <that main config>` (plus `-e stderr` on
#   nginx >= 1.19.5, so a non-root test never tries the system error log).
#   This tests exactly what would be live, except nginx.conf's own http-level
#   settings, which pikud's configs do not rely on: each is self-contained (its
#   own upstream, websocket map and cache zone). The main config starts with
#   the preamble, by default Debian's `include /etc/nginx/modules-enabled/*.conf;`
#   so an include file may use the dynamic modules the real nginx loads, and
#   sends the pid file to nginx/ and the logs to stderr, which pikud can write.
# - pikud runs the test as its own user, not root: `sudo nginx -t -c FILE` on a
#   file the piku user writes would let it `load_module` code into root. But
#   after parsing, `nginx -t` also opens log files and binds the listening
#   sockets, and an unprivileged user may not bind ports below 1024. So a test
#   that failed only with "Permission denied" after nginx said "syntax is ok"
#   counts as passed (passed_test()): those are the steps the root master will
#   do itself; parse errors, missing certificates, duplicate locations, unknown
#   upstreams and zone conflicts are all found before them. It follows that
#   the certificate and key must be readable by pikud's user, not only root.
# - http2: nginx >= 1.25.1 wants `http2 on;` and deprecates `listen ... http2`,
#   older ones only know the latter; `nginx -V` says which, and whether the
#   module is built at all. Asked once per Nginx object.
# - Reloading: the default `sudo -n systemctl reload nginx` works on a stock
#   Debian nginx with contrib/sudoers.d-pikud; `-n` makes a missing rule an
#   immediate error instead of a password prompt that hangs the deploy.

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pikud import identity
from pikud.atomic import write_atomic
from pikud.errors import NginxError
from pikud.nginxaccess import (
    DEFAULT_CONF,
    DEFAULT_USER,
    LIST,
    READ,
    Target,
    blocked,
    conf_path,
    sockets_blocked,
    worker_user,
)
from pikud.paths import Paths
from pikud.programs import which
from pikud.proxy.commands import run
from pikud.proxy.render import Http2Style, quote, render
from pikud.proxy.site import NginxSite
from pikud.proxy.tls import ensure_certificate

log = logging.getLogger(__name__)

DEFAULT_TEST_COMMAND = ("nginx",)
DEFAULT_RELOAD_COMMAND = ("sudo", "-n", "systemctl", "reload", "nginx")
DEBIAN_MODULES = "/etc/nginx/modules-enabled"
_VERSION = re.compile(r"nginx/([0-9]+)\.([0-9]+)\.([0-9]+)")


@dataclass(frozen=True)
class NginxInfo:
    """What ``nginx -V`` says that the configs depend on."""

    version: tuple[int, int, int]
    http2_module: bool
    conf: Path = DEFAULT_CONF           # the main config, where the workers' user is set

    @classmethod
    def parse(cls, text: str) -> NginxInfo:
        match = _VERSION.search(text)
        if match is None:
            raise NginxError(f"cannot read nginx's version from `nginx -V`:\n{text.strip()}")
        major, minor, patch = (int(part) for part in match.groups())
        return cls((major, minor, patch), "--with-http_v2_module" in text, conf_path(text))

    @property
    def http2_style(self) -> Http2Style:
        if not self.http2_module:
            return "off"
        return "on" if self.version >= (1, 25, 1) else "listen"

    @property
    def has_error_log_flag(self) -> bool:
        return self.version >= (1, 19, 5)


def passed_test(code: int, output: str) -> bool:
    """Whether ``nginx -t`` accepted the config, for a test run without root (design notes)."""
    if code == 0:
        return True
    errors = [line for line in output.splitlines() if "[emerg]" in line or "[alert]" in line]
    return ("syntax is ok" in output and bool(errors)
            and all("(13: Permission denied)" in line for line in errors))


def default_preamble() -> tuple[str, ...]:
    """Main-context lines of the test config: Debian's dynamic modules, if that folder exists."""
    if os.path.isdir(DEBIAN_MODULES):
        return (f"include {DEBIAN_MODULES}/*.conf;",)
    return ()


class Nginx:
    """The nginx in front of every app: ``apply`` a site, ``remove`` an app's."""

    def __init__(self, paths: Paths, test_command: Sequence[str] = DEFAULT_TEST_COMMAND,
                 reload_command: Sequence[str] = DEFAULT_RELOAD_COMMAND, *,
                 preamble: Sequence[str] | None = None, timeout: float = 30.0) -> None:
        self.paths = paths
        if tuple(test_command) == DEFAULT_TEST_COMMAND and which("nginx") is None:
            test_command = ("/usr/sbin/nginx",)     # a login PATH without sbin
        self.test_command = tuple(test_command)
        self.reload_command = tuple(reload_command)
        self.preamble = tuple(default_preamble() if preamble is None else preamble)
        self.timeout = timeout
        self._info: NginxInfo | None = None
        self._lock = asyncio.Lock()

    async def info(self) -> NginxInfo:
        if self._info is None:
            code, output = await run([*self.test_command, "-V"], timeout=self.timeout)
            if code != 0:
                raise NginxError(f"`{' '.join(self.test_command)} -V` failed:\n{output.strip()}")
            self._info = NginxInfo.parse(output)
        return self._info

    async def worker_user(self) -> str:
        """The user nginx's workers run as (its main config's ``user``), read each time."""
        return worker_user((await self.info()).conf)

    @property
    def lock(self) -> asyncio.Lock:
        """Held while a config is tested, written or removed; acme.sh installs under it too."""
        return self._lock

    def conf_path(self, app: str) -> Path:
        return self.paths.nginx() / f"{app}.conf"

    async def apply(self, site: NginxSite) -> None:
        """Make ``site`` live, or raise NginxError and leave everything as it was.

        A missing certificate is made first (self-signed), since nginx refuses
        an ssl server without one; the copy of NGINX_INCLUDE_FILE is written
        under its own hashed name, and the cache folder's parent is created so
        nginx can make the folder itself.
        """
        async with self._lock:
            info = await self.info()
            await ensure_certificate(self.paths, site.app, site.server_names,
                                     timeout=self.timeout)
            if site.cache is not None and site.upstreams:
                await self._cache_folder(site.app, Path(site.cache.path))
            text = render(site, http2_style=info.http2_style)
            conf = self.conf_path(site.app)
            include = Path(site.include.copy) if site.include else None
            fresh = include is not None and not include.exists()
            try:
                if site.include is not None:
                    write_atomic(Path(site.include.copy), site.include.text, 0o644)
                await self._test(site, text, info)
            except BaseException:
                if include is not None and fresh:
                    include.unlink(missing_ok=True)
                raise
            write_atomic(conf, text, 0o644)
            log.info("nginx: wrote %s", conf)
            for old in self.paths.nginx().glob(f"{site.app}.include-*"):
                if old != include:
                    old.unlink(missing_ok=True)
            await self._reload(f"{conf.name} is in place")

    async def _cache_folder(self, app: str, path: Path) -> None:
        """Make the parent of an app's cache folder: nginx's master makes the folder and
        gives it to its workers' user. With app users it is under ``cache/.nginx/APP``,
        made here for that user, 0700: no app reads it, and no app owns a folder above
        it, where it could swap it for a link that the master (root) would follow."""
        who = identity.current()
        if who.separate:
            base = who.nginx_cache(self.paths, app)
            who.give(base.parent, who.deploy_owner(), 0o711)
            try:
                worker = pwd.getpwnam(await self.worker_user())
            except KeyError:        # no such user: nginx's master gives it to the right one
                owner = None
            else:
                owner = worker.pw_uid, worker.pw_gid
            who.give(base, owner, 0o700)
        path.parent.mkdir(parents=True, exist_ok=True)

    async def remove(self, app: str) -> None:
        """Remove the app's config, include copy, certificate, key and acme record; reload."""
        async with self._lock:
            folder = self.paths.nginx()
            removed = False
            for path in (folder / f"{app}.conf", *folder.glob(f"{app}.include-*"),
                         folder / f"{app}.crt", folder / f"{app}.key", folder / f"{app}.acme"):
                try:
                    path.unlink()
                    removed = True
                except FileNotFoundError:
                    pass
            if removed:
                log.info("nginx: removed the site of %s", app)
                await self._reload(f"{app}.conf is removed")

    async def _test(self, site: NginxSite, text: str, info: NginxInfo) -> None:
        app, folder = site.app, self.paths.nginx()
        conf = self.conf_path(app)
        candidate, main = folder / f".{app}.candidate", folder / f".{app}.test-main"
        pid = folder / f".{app}.test-pid"
        others = sorted(path for path in folder.glob("*.conf") if path != conf)
        includes = "".join(f"    include {quote(path)};\n" for path in [*others, candidate])
        preamble = "".join(f"{line}\n" for line in self.preamble)
        argv = [*self.test_command, "-t", "-c", str(main)]
        if info.has_error_log_flag:
            argv[-2:-2] = ["-e", "stderr"]
        try:
            write_atomic(candidate, text, 0o644)
            write_atomic(main, f"# pikud: the candidate config of {app} with every other app's\n"
                               f"pid {quote(pid)};\nerror_log stderr;\n{preamble}events {{}}\n"
                               f"http {{\n    access_log off;\n{includes}}}\n", 0o644)
            code, output = await run(argv, timeout=self.timeout)
        finally:
            for path in (candidate, main, pid):
                path.unlink(missing_ok=True)
        if not passed_test(code, output):
            message = output.replace(str(candidate), f"{conf} (new)")
            if site.include is not None:
                message = message.replace(site.include.copy,
                                          f"{site.include.source} (NGINX_INCLUDE_FILE)")
            state = "the previous config stays" if conf.exists() else "no config was written"
            raise NginxError(f"nginx refused the new config of {app}; {state}:\n"
                             f"{message.strip()}")

    async def _reload(self, done: str) -> None:
        code, output = await run(self.reload_command, timeout=self.timeout)
        if code != 0:
            raise NginxError(f"{done}, but reloading nginx failed "
                             f"({' '.join(self.reload_command)}, exit status {code}):\n"
                             f"{output.strip()}")


# --- can nginx's workers reach the app's files and sockets? -----------------------
def access_problems(site: NginxSite, user: str = DEFAULT_USER) -> list[str]:
    """What stops nginx's workers (running as ``user``) from serving ``site``, as advice:
    its static folders, catch-all file, ACME webroot and unix sockets (nginxaccess)."""
    targets = [Target(Path(static.path), LIST, "read") for static in site.static_paths]
    targets.append(Target(Path(site.acme_root), LIST, "serve ACME challenges from"))
    if site.catch_all is not None:
        targets.append(Target(Path(site.catch_all), READ, "read"))
    found = blocked(targets, user)
    for folder in dict.fromkeys(Path(server.removeprefix("unix:")).parent
                                for server in site.upstreams if server.startswith("unix:")):
        found += sockets_blocked(folder, user)
    return list(dict.fromkeys(item.advice() for item in found))
