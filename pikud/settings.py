"""The daemon's own settings: ``$PIKU_ROOT/pikud.toml``, re-read on SIGHUP.

    log_level = "info"            # debug, info, warning, error
    shutdown_timeout = 30         # seconds for every app to stop on SIGTERM
    events_kept = 1000            # recent events kept for GET /events
    nginx_test = ["nginx"]        # nginx binary used for `-t` on candidate configs
    nginx_reload = ["sudo", "-n", "systemctl", "reload", "nginx"]
    nginx_preamble = []           # main-context lines for `nginx -t` (default: Debian's modules)
    acme_sh = "/home/piku/.acme.sh/acme.sh"   # default: acme.sh on PATH, else ~/.acme.sh/acme.sh
    cloudflare_urls = ["https://www.cloudflare.com/ips-v4", "https://www.cloudflare.com/ips-v6"]
    cloudflare_refresh_days = 7   # refresh those lists automatically
                                  # (0: only `piku cloudflare:refresh`)
    router_header_timeout = 10    # seconds a router client has to send a whole request head
    router_keepalive_timeout = 75 # seconds an idle keep-alive connection to the router is kept
    router_max_connections = 4096 # client connections the router holds at once
    router_fd_reserve = 256       # descriptors the router leaves to spawns, pipes, control
    control_idle_timeout = 10     # seconds a control-socket connection may wait without a request
    max_processes_per_app = 100   # processes one app may ask for (slots, server workers, cron)
    max_processes = 1000          # processes of all apps together
    deploy_user = "piku"          # as root: the user of builds and the control socket
                                  # (default: the owner of PIKU_ROOT); read at start only

    [defaults]                    # an app's ENV overrides each of these
    PIKU_STOP_TIMEOUT = 10
    PIKU_START_SECS = 1
    ...                           # any key that appsettings.app_settings reads

A missing file means every default; a bad file is an error naming the key,
one that cannot be read (a folder, no read permission) an error naming the
reason, and on SIGHUP the settings in force stay as they were. The router_* and
control_* settings are read at start only (they shape listening sockets).

As root, pikud runs the commands the file names (nginx_test, nginx_reload,
acme_sh, ...), so it reads the file only if root owns it, no one else may
write it, and it is no link (``read_trusted``); otherwise it refuses to start,
and a SIGHUP keeps the settings in force.
"""

# Design notes: the folder the file sits in is the deploy user's, who may
# rename, replace or link it at any moment. So the checks are made on the
# descriptor that is then read (O_NOFOLLOW: no symlink; fstat: owner, mode,
# one link, a regular file), never on the path before opening it. A hard link
# to a root-owned file elsewhere (which protected_hardlinks already forbids)
# is refused by its link count. Every root daemon checks, not only one with
# app users: which mode it is in is itself read from this file (deploy_user).

from __future__ import annotations

import errno
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pikud.appsettings import AppSettings, app_settings
from pikud.ceilings import Ceilings
from pikud.errors import EnvError, SpecError
from pikud.proxy.cloudflare import DEFAULT_URLS
from pikud.proxy.nginx import DEFAULT_RELOAD_COMMAND, DEFAULT_TEST_COMMAND
from pikud.regularfiles import open_regular

LEVELS = ("debug", "info", "warning", "error")
KEYS = frozenset({"log_level", "shutdown_timeout", "events_kept", "defaults", "nginx_test",
                  "nginx_reload", "nginx_preamble", "cloudflare_urls", "cloudflare_refresh_days",
                  "acme_sh", "router_header_timeout", "router_keepalive_timeout",
                  "router_max_connections", "router_fd_reserve", "control_idle_timeout",
                  "max_processes_per_app", "max_processes", "deploy_user"})
DEFAULT_CONTROL_IDLE_TIMEOUT = 10.0
MOST_PROCESSES = 100_000


@dataclass(frozen=True)
class ConnectionLimits:
    """The router's (proxy/connections.py), kept here: a daemon behind nginx runs no router
    and does not import it."""
    header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    max_connections: int = 4096
    fd_reserve: int = 256


@dataclass(frozen=True)
class Settings:
    log_level: str = "info"
    shutdown_timeout: float = 30.0
    events_kept: int = 1000
    app_defaults: AppSettings = field(default_factory=AppSettings)
    nginx_test: tuple[str, ...] = DEFAULT_TEST_COMMAND
    nginx_reload: tuple[str, ...] = DEFAULT_RELOAD_COMMAND
    nginx_preamble: tuple[str, ...] | None = None
    cloudflare_urls: tuple[str, ...] = DEFAULT_URLS
    cloudflare_refresh_days: float = 7.0
    acme_sh: str | None = None
    router: ConnectionLimits = field(default_factory=ConnectionLimits)
    control_idle_timeout: float = DEFAULT_CONTROL_IDLE_TIMEOUT
    ceilings: Ceilings = field(default_factory=Ceilings)
    deploy_user: str | None = None


def deploy_user(value: Any, label: str) -> str | None:
    """deploy_user: a user name (pwd has the last word, at start: identity.resolve)."""
    if value is not None and (not isinstance(value, str)
                              or not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}", value)):
        raise SpecError(f"deploy_user must be a user name, got {value!r}", file=label,
                        key="deploy_user")
    return value


def cloudflare_urls(value: Any, label: str) -> tuple[str, ...]:
    """A non-empty list of http(s) URLs, each one a plain word."""
    key = "cloudflare_urls"
    if not isinstance(value, list) or not value or len(value) > 10:
        raise SpecError(f"{key} must be a list of 1 to 10 URLs", file=label, key=key)
    for url in value:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname \
                or any(char.isspace() or not char.isprintable() for char in url):
            raise SpecError(f"{key}: {url!r} is not an http:// or https:// URL", file=label,
                            key=key)
    return tuple(value)


def refresh_days(value: Any, label: str) -> float:
    key = "cloudflare_refresh_days"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 365:
        raise SpecError(f"{key} must be a number of days from 0 (never) to 365, got {value!r}",
                        file=label, key=key)
    return float(value)


def acme_path(value: Any, label: str) -> str | None:
    """acme_sh: the absolute path of acme.sh (default: looked up, see proxy/acme.py)."""
    if value is not None and (not isinstance(value, str) or not value.startswith("/")
                              or any(char.isspace() or not char.isprintable() for char in value)):
        raise SpecError(f"acme_sh must be the absolute path of acme.sh, got {value!r}",
                        file=label, key="acme_sh")
    return value


def seconds(raw: dict[str, Any], key: str, default: float, label: str) -> float:
    """``raw[key]`` (or ``default``): a timeout from 0.1 to 3600 seconds."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not 0.1 <= value <= 3600:
        raise SpecError(f"{key} must be a number of seconds from 0.1 to 3600, got {value!r}",
                        file=label, key=key)
    return float(value)


def count(raw: dict[str, Any], key: str, default: int, low: int, high: int, label: str) -> int:
    """``raw[key]`` (or ``default``): an integer from ``low`` to ``high``."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SpecError(f"{key} must be a whole number from {low} to {high}, got {value!r}",
                        file=label, key=key)
    return value


def router_limits(raw: dict[str, Any], label: str) -> ConnectionLimits:
    default = ConnectionLimits()
    return ConnectionLimits(
        header_timeout=seconds(raw, "router_header_timeout", default.header_timeout, label),
        keepalive_timeout=seconds(raw, "router_keepalive_timeout", default.keepalive_timeout,
                                  label),
        max_connections=count(raw, "router_max_connections", default.max_connections, 1,
                              1_000_000, label),
        fd_reserve=count(raw, "router_fd_reserve", default.fd_reserve, 64, 1_000_000, label))


def ceilings(raw: dict[str, Any], label: str) -> Ceilings:
    """max_processes_per_app and max_processes: whole numbers, the first not above the second."""
    per_app = count(raw, "max_processes_per_app", Ceilings.per_app, 1, MOST_PROCESSES, label)
    total = count(raw, "max_processes", Ceilings.total, 1, MOST_PROCESSES, label)
    if per_app > total:
        raise SpecError(f"max_processes_per_app ({per_app}) is more than max_processes "
                        f"({total})", file=label, key="max_processes_per_app")
    return Ceilings(per_app, total)


MOST_BYTES = 64 * 1024      # pikud.toml is a few lines; read on the loop at every SIGHUP


def read_trusted(path: Path) -> str:
    """The text of ``path``, a regular file; as root, only one that root owns and nobody
    else may write, opened without following a link (Design notes). FileNotFoundError when
    there is none; SpecError naming the reason otherwise (its owner, mode and the fix, or
    why it cannot be read), with every descriptor it opened closed."""
    root = os.geteuid() == 0
    try:
        fd, st = open_regular(path, os.O_RDONLY, follow=not root)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if root and exc.errno == errno.ELOOP:
            raise SpecError(f"cannot open it without following a link ({os.strerror(exc.errno)}): "
                            "pikud runs as root and runs the commands it names, so it must be "
                            "a regular file root owns", file=str(path)) from None
        raise SpecError(f"cannot read it: {exc.strerror}", file=str(path)) from None
    try:
        if root:
            check_root_owned(path, st)
        with open(fd, "rb", closefd=False) as file:
            data = file.read(MOST_BYTES + 1)        # at most: the file may grow meanwhile
        if len(data) > MOST_BYTES:
            raise SpecError(f"more than {MOST_BYTES // 1024} KiB: a settings file is a few "
                            "lines", file=str(path))
    except OSError as exc:
        raise SpecError(f"cannot read it: {exc.strerror}", file=str(path)) from None
    finally:
        os.close(fd)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}", file=str(path)) from exc


def check_root_owned(path: Path, st: os.stat_result) -> None:
    """SpecError unless ``st`` (of ``path``) is root's, writable by root alone, one link."""
    if st.st_uid == 0 and not st.st_mode & 0o022 and st.st_nlink == 1:
        return
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = f"uid {st.st_uid}"
    raise SpecError(
        f"owned by {owner} with mode {stat.filemode(st.st_mode)} "
        f"({st.st_mode & 0o7777:04o}), {st.st_nlink} link(s): pikud runs as root and "
        "runs the commands it names, so only root may write it: "
        f"chown root:root {path} && chmod 644 {path}", file=str(path))


def load_settings(path: Path) -> Settings:
    label = str(path)
    try:
        text = read_trusted(path)
    except FileNotFoundError:
        return Settings()
    # imported on first use (here: when pikud.toml exists): the resting daemon stays light
    import tomllib
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}", file=label) from exc
    except RecursionError:      # tomllib recurses once per nested array or table
        raise SpecError("not valid TOML: nested too deeply", file=label) from None
    unknown = set(raw) - KEYS
    if unknown:
        raise SpecError(f"unknown setting(s): {', '.join(sorted(unknown))}", file=label)
    level = raw.get("log_level", "info")
    if level not in LEVELS:
        raise SpecError(f"log_level must be one of {', '.join(LEVELS)}, got {level!r}",
                        file=label, key="log_level")
    timeout = raw.get("shutdown_timeout", 30.0)
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        raise SpecError(f"shutdown_timeout must be a positive number, got {timeout!r}",
                        file=label, key="shutdown_timeout")
    kept = count(raw, "events_kept", 1000, 1, 1_000_000, label)
    defaults = raw.get("defaults", {})
    if not isinstance(defaults, dict):
        raise SpecError("[defaults] must be a table", file=label, key="defaults")
    try:
        app_defaults = app_settings({k: str(v) for k, v in defaults.items()})
    except EnvError as exc:
        raise SpecError(f"[defaults] {exc}", file=label, key=exc.key) from exc
    commands = {}
    for key in ("nginx_test", "nginx_reload", "nginx_preamble"):
        value = raw.get(key)
        if value is not None and (not isinstance(value, list) or not all(
                isinstance(word, str) and word for word in value)):
            raise SpecError(f"{key} must be a list of non-empty strings", file=label, key=key)
        commands[key] = tuple(value) if value is not None else None
    return Settings(level, float(timeout), kept, app_defaults,
                    commands["nginx_test"] or DEFAULT_TEST_COMMAND,
                    commands["nginx_reload"] or DEFAULT_RELOAD_COMMAND, commands["nginx_preamble"],
                    cloudflare_urls(raw.get("cloudflare_urls", list(DEFAULT_URLS)), label),
                    refresh_days(raw.get("cloudflare_refresh_days", 7), label),
                    acme_sh=acme_path(raw.get("acme_sh"), label),
                    router=router_limits(raw, label),
                    control_idle_timeout=seconds(raw, "control_idle_timeout",
                                                 DEFAULT_CONTROL_IDLE_TIMEOUT, label),
                    ceilings=ceilings(raw, label),
                    deploy_user=deploy_user(raw.get("deploy_user"), label))
