"""An app's supervision settings: the PIKU_* keys of its merged ENV, read strictly.

Each key goes through a converter of pikud.convert, so a bad value is an
EnvError naming the key; an absent key keeps the daemon's default
(pikud.toml's [apps] table). Stdlib only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from pikud.convert import (
    bad_value,
    boolean,
    nonneg_int,
    positive_int,
    relative_paths,
    seconds,
    size,
    url_path,
)
from pikud.errors import EnvError
from pikud.limits import LimitSettings, limit_settings

T = TypeVar("T")


@dataclass(frozen=True, slots=True)      # slots: one per app
class AppSettings:
    """Per-app supervision settings, read from the app's ENV (see app_settings)."""

    stop_timeout: float = 10.0
    start_secs: float = 1.0
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    start_retries: int = 5
    fatal_cooloff: float = 300.0
    log_max_bytes: int = 1048576
    log_backups: int = 5
    touch_reload: tuple[str, ...] = ()
    auto_restart: bool = True
    keep_releases: int = 5
    healthcheck: str | None = None  # PIKU_HEALTHCHECK: a path new web processes must answer
    ready_timeout: float = 30.0     # PIKU_READY_TIMEOUT: how long a new web process may take
    listen_fds: bool = False        # PIKU_LISTEN_FDS: web processes get the daemon's socket
    idle_timeout: float = 0.0       # PIKU_IDLE_TIMEOUT (piku's UWSGI_IDLE): scale to zero; 0 = off
    upstream: str = "unix"          # PIKU_UPSTREAM: wsgi/asgi slots serve a unix socket, or tcp
    limits: LimitSettings = LimitSettings()     # PIKU_MEMORY_MAX, ... (pikud.limits)


def _opt(env: Mapping[str, str], key: str, convert: Callable[[str, str], T], default: T) -> T:
    return convert(key, env[key]) if key in env else default


UPSTREAMS = ("unix", "tcp")


def upstream(key: str, value: str) -> str:
    """PIKU_UPSTREAM: what wsgi and asgi slots serve on, a unix socket or a loopback port."""
    word = value.strip().lower()
    if word not in UPSTREAMS:
        raise bad_value(key, " or ".join(UPSTREAMS), value)
    return word


def idle_setting(env: Mapping[str, str]) -> str:
    """The key scale to zero is read from: PIKU_IDLE_TIMEOUT, else piku's UWSGI_IDLE."""
    return "PIKU_IDLE_TIMEOUT" if "PIKU_IDLE_TIMEOUT" in env else "UWSGI_IDLE"


def app_settings(env: Mapping[str, str], defaults: AppSettings = AppSettings()) -> AppSettings:
    """Read the PIKU_* settings from the merged app env; absent keys keep ``defaults``."""
    log_key = "PIKU_LOG_MAXSIZE" if "PIKU_LOG_MAXSIZE" in env else "UWSGI_LOG_MAXSIZE"
    idle_key = idle_setting(env)
    settings = AppSettings(
        stop_timeout=_opt(env, "PIKU_STOP_TIMEOUT", seconds, defaults.stop_timeout),
        start_secs=_opt(env, "PIKU_START_SECS", seconds, defaults.start_secs),
        backoff_base=_opt(env, "PIKU_BACKOFF_BASE", seconds, defaults.backoff_base),
        backoff_max=_opt(env, "PIKU_BACKOFF_MAX", seconds, defaults.backoff_max),
        start_retries=_opt(env, "PIKU_START_RETRIES", nonneg_int, defaults.start_retries),
        fatal_cooloff=_opt(env, "PIKU_FATAL_COOLOFF", seconds, defaults.fatal_cooloff),
        log_max_bytes=_opt(env, log_key, size, defaults.log_max_bytes),
        log_backups=_opt(env, "PIKU_LOG_BACKUPS", positive_int, defaults.log_backups),
        touch_reload=_opt(env, "PIKU_TOUCH_RELOAD", relative_paths, defaults.touch_reload),
        auto_restart=_opt(env, "PIKU_AUTO_RESTART", boolean, defaults.auto_restart),
        keep_releases=_opt(env, "PIKU_KEEP_RELEASES", positive_int, defaults.keep_releases),
        healthcheck=_opt(env, "PIKU_HEALTHCHECK", url_path, defaults.healthcheck),
        ready_timeout=_opt(env, "PIKU_READY_TIMEOUT", seconds, defaults.ready_timeout),
        listen_fds=_opt(env, "PIKU_LISTEN_FDS", boolean, defaults.listen_fds),
        idle_timeout=_opt(env, idle_key, seconds, defaults.idle_timeout),
        upstream=_opt(env, "PIKU_UPSTREAM", upstream, defaults.upstream),
        limits=limit_settings(env, defaults.limits),
    )
    for key, ok, expected in ((log_key, settings.log_max_bytes >= 1024, "at least 1024 bytes"),
                              ("PIKU_LOG_BACKUPS", settings.log_backups <= 100, "1 to 100")):
        if key in env and not ok:
            raise bad_value(key, expected, env[key])
    if settings.backoff_max < settings.backoff_base:
        raise EnvError(f"PIKU_BACKOFF_MAX: {settings.backoff_max:g}s is less than "
                       f"PIKU_BACKOFF_BASE ({settings.backoff_base:g}s)", key="PIKU_BACKOFF_MAX")
    return settings
