"""Tables for pikud.appsettings: the PIKU_* keys, their defaults and their errors."""

from __future__ import annotations

import pytest

from pikud.appsettings import AppSettings, app_settings
from pikud.errors import EnvError


@pytest.mark.parametrize(("env", "changes"), [
    ({}, {}),
    ({"UNRELATED": "x", "PIKU_OTHER": "y"}, {}),
    ({"PIKU_STOP_TIMEOUT": "2.5", "PIKU_START_SECS": "100ms", "PIKU_BACKOFF_BASE": "0",
      "PIKU_BACKOFF_MAX": "1m", "PIKU_START_RETRIES": "0", "PIKU_FATAL_COOLOFF": "0"},
     {"stop_timeout": 2.5, "start_secs": 0.1, "backoff_base": 0.0, "backoff_max": 60.0,
      "start_retries": 0, "fatal_cooloff": 0.0}),
    ({"PIKU_LOG_MAXSIZE": "2M", "PIKU_LOG_BACKUPS": "100"},
     {"log_max_bytes": 2097152, "log_backups": 100}),
    ({"UWSGI_LOG_MAXSIZE": "4096"}, {"log_max_bytes": 4096}),
    ({"UWSGI_LOG_MAXSIZE": "4096", "PIKU_LOG_MAXSIZE": "1K"}, {"log_max_bytes": 1024}),
    ({"PIKU_TOUCH_RELOAD": "app.py,conf/x.ini"}, {"touch_reload": ("app.py", "conf/x.ini")}),
    ({"PIKU_AUTO_RESTART": "no"}, {"auto_restart": False}),
    ({"UWSGI_IDLE": "300"}, {"idle_timeout": 300.0}),
    ({"UWSGI_IDLE": "300", "PIKU_IDLE_TIMEOUT": "2m"}, {"idle_timeout": 120.0}),
    ({"PIKU_UPSTREAM": "tcp"}, {"upstream": "tcp"}),
    ({"PIKU_UPSTREAM": " Unix "}, {"upstream": "unix"}),
])
def test_app_settings(env: dict[str, str], changes: dict[str, object]) -> None:
    assert app_settings(env) == AppSettings(**changes)  # type: ignore[arg-type]


def test_app_settings_defaults_come_from_caller() -> None:
    defaults = AppSettings(stop_timeout=3.0, log_backups=2, touch_reload=("x",))
    assert app_settings({}, defaults) is not defaults
    assert app_settings({}, defaults) == defaults
    assert app_settings({"PIKU_LOG_BACKUPS": "9"}, defaults) == AppSettings(
        stop_timeout=3.0, log_backups=9, touch_reload=("x",))


@pytest.mark.parametrize(("env", "key", "word"), [
    ({"PIKU_STOP_TIMEOUT": "abc"}, "PIKU_STOP_TIMEOUT", "a number of seconds"),
    ({"PIKU_START_SECS": "-1"}, "PIKU_START_SECS", "a number of seconds"),
    ({"PIKU_START_RETRIES": "-1"}, "PIKU_START_RETRIES", "0 or more"),
    ({"PIKU_FATAL_COOLOFF": "soon"}, "PIKU_FATAL_COOLOFF", "a number of seconds"),
    ({"PIKU_LOG_MAXSIZE": "1023"}, "PIKU_LOG_MAXSIZE", "at least 1024 bytes"),
    ({"UWSGI_LOG_MAXSIZE": "1k1"}, "UWSGI_LOG_MAXSIZE", "a size in bytes"),
    ({"UWSGI_LOG_MAXSIZE": "1", "PIKU_LOG_MAXSIZE": "1M"}, None, None),
    ({"PIKU_LOG_BACKUPS": "0"}, "PIKU_LOG_BACKUPS", "1 or more"),
    ({"PIKU_LOG_BACKUPS": "101"}, "PIKU_LOG_BACKUPS", "1 to 100"),
    ({"PIKU_TOUCH_RELOAD": "/etc"}, "PIKU_TOUCH_RELOAD", "inside the app directory"),
    ({"PIKU_AUTO_RESTART": "sometimes"}, "PIKU_AUTO_RESTART", "true/false"),
    ({"PIKU_UPSTREAM": "udp"}, "PIKU_UPSTREAM", "expected unix or tcp, got 'udp'"),
    ({"PIKU_UPSTREAM": ""}, "PIKU_UPSTREAM", "expected unix or tcp"),
    ({"PIKU_BACKOFF_MAX": "0.5"}, "PIKU_BACKOFF_MAX", "less than PIKU_BACKOFF_BASE (1s)"),
    ({"PIKU_BACKOFF_BASE": "1m"}, "PIKU_BACKOFF_MAX",
     "PIKU_BACKOFF_MAX: 30s is less than PIKU_BACKOFF_BASE (60s)"),
])
def test_app_settings_bad(env: dict[str, str], key: str | None, word: str | None) -> None:
    if key is None:
        assert app_settings(env).log_max_bytes == 1048576  # PIKU_ wins over UWSGI_
        return
    with pytest.raises(EnvError) as info:
        app_settings(env)
    assert info.value.key == key
    assert str(info.value).startswith(f"{key}: ")
    assert word is not None and word in str(info.value)
