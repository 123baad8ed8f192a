"""Tables for pikud.limits: the PIKU_*_MAX keys, per kind, over pikud.toml's defaults."""

from __future__ import annotations

import pytest

from pikud.appsettings import app_settings
from pikud.errors import EnvError
from pikud.limits import Limits, LimitSettings, limit_settings, shown

M = 1024 ** 2
ENV = {"PIKU_MEMORY_MAX": "256M", "PIKU_CPU_MAX": "50%", "PIKU_NOFILE_MAX": "1024",
       "PIKU_MEMORY_MAX_WORKER": "1G", "PIKU_TASKS_MAX_MY_QUEUE": "32",
       "PIKU_CPU_MAX_WORKER": "max", "PIKU_OTHER_MAX": "x"}


@pytest.mark.parametrize(("kind", "limits"), [
    ("web", Limits(memory=256 * M, cpu=0.5, nofile=1024)),
    ("worker", Limits(memory=1024 * M, nofile=1024,
                      keys=(("memory", "PIKU_MEMORY_MAX_WORKER"), ("cpu", "PIKU_CPU_MAX_WORKER")))),
    ("my-queue", Limits(memory=256 * M, cpu=0.5, tasks=32, nofile=1024,
                        keys=(("tasks", "PIKU_TASKS_MAX_MY_QUEUE"),))),
])
def test_each_kind_takes_its_own_keys_over_the_apps(kind: str, limits: Limits) -> None:
    assert limit_settings(ENV).for_kind(kind) == limits


def test_no_keys_no_limits() -> None:
    limits = app_settings({}).limits.for_kind("web")
    assert not limits and limits.set() == [] and limits.table() == {}


def test_an_app_overrides_or_lifts_the_daemons_defaults() -> None:
    defaults = limit_settings({"PIKU_MEMORY_MAX": "512M", "PIKU_NOFILE_MAX": "64"})
    limits = limit_settings({"PIKU_NOFILE_MAX": "max", "PIKU_TASKS_MAX": "10"},
                            defaults).for_kind("web")
    assert limits == Limits(memory=512 * M, tasks=10)
    assert app_settings({}, app_settings({"PIKU_CPU_MAX": "2"})).limits == LimitSettings(
        (("PIKU_CPU_MAX", 2.0),))


def test_names_and_table_say_the_key_that_set_each_limit() -> None:
    limits = limit_settings(ENV).for_kind("worker")
    assert limits.named("memory") == "PIKU_MEMORY_MAX_WORKER 1G"
    assert limits.table() == {"PIKU_MEMORY_MAX_WORKER": "1G", "PIKU_NOFILE_MAX": "1024"}


@pytest.mark.parametrize(("key", "value", "text"), [
    ("PIKU_MEMORY_MAX", 3 * 1024 ** 3, "3G"), ("PIKU_MEMORY_MAX", 1536 * 1024, "1536K"),
    ("PIKU_MEMORY_MAX", 1048577, "1048577"), ("PIKU_CPU_MAX", 0.5, "50%"),
    ("PIKU_CPU_MAX", 2.0, "200%"), ("PIKU_TASKS_MAX", 64, "64"), ("PIKU_NOFILE_MAX", None, "max"),
])
def test_shown(key: str, value: float | None, text: str) -> None:
    assert shown(key, value) == text


@pytest.mark.parametrize(("key", "value", "message"), [
    ("PIKU_MEMORY_MAX", "512K", "PIKU_MEMORY_MAX: expected at least 1M (or max), got '512K'"),
    ("PIKU_MEMORY_MAX_WEB", "lots", "PIKU_MEMORY_MAX_WEB: expected a size in bytes"),
    ("PIKU_CPU_MAX", "0%", "PIKU_CPU_MAX: expected a percentage of one CPU"),
    ("PIKU_TASKS_MAX", "0", "PIKU_TASKS_MAX: expected a whole number of 1 or more"),
    ("PIKU_NOFILE_MAX_WORKER", "-1", "PIKU_NOFILE_MAX_WORKER: expected a whole number"),
])
def test_a_bad_value_names_its_key(key: str, value: str, message: str) -> None:
    with pytest.raises(EnvError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        app_settings({key: value})


def test_a_per_kind_key_for_no_kind_is_a_warning() -> None:
    assert limit_settings(ENV).stray(["web", "worker"]) == [
        "PIKU_TASKS_MAX_MY_QUEUE: the Procfile has no kind 'my_queue'; ignored"]
    assert limit_settings(ENV).stray(["web", "worker", "my-queue"]) == []
