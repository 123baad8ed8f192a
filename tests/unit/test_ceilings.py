"""The process ceilings: how an app's processes are counted, and the settings that bound them."""

from __future__ import annotations

import errno
import resource
from pathlib import Path

import pytest

from pikud.appsettings import AppSettings
from pikud.appspec import AppSpec, parse_procfile
from pikud.ceilings import Ceilings, admit, process_counts
from pikud.deploy.servers import server_command
from pikud.errors import SpecError, TooManyProcesses
from pikud.fds import open_descriptors
from pikud.procman.descriptors import RESERVE, check_headroom
from pikud.settings import load_settings


def spec(procfile: str, scaling: dict[str, int], **env: str) -> AppSpec:
    parsed = parse_procfile(procfile)
    return AppSpec("app", parsed, dict(env), scaling, AppSettings())


def test_slots_server_workers_and_cron_entries_are_counted() -> None:
    app = spec("wsgi: app:application\nworker: w\ncron1: * * * * * c\nrelease: r\n",
               {"wsgi": 2, "worker": 3}, UWSGI_PROCESSES="4")
    assert process_counts(app) == {"wsgi": 10, "worker": 3, "cron1": 1}
    assert admit(app, Ceilings(14, 100), others=86) == 14


@pytest.mark.parametrize("kind, env, idle, per_slot", [
    ("wsgi", {}, 0.0, 2),                                   # granian's one-worker default
    ("wsgi", {"UWSGI_PROCESSES": "1"}, 0.0, 2),
    ("wsgi", {"PIKU_WSGI_SERVER": "gunicorn"}, 0.0, 3),
    ("wsgi", {}, 60.0, 3),                                  # on demand: gunicorn
    ("asgi", {}, 0.0, 3),
    ("asgi", {"UWSGI_PROCESSES": "3"}, 0.0, 4),
])
def test_a_server_slot_counts_the_processes_its_command_starts(
        kind: str, env: dict[str, str], idle: float, per_slot: int) -> None:
    """The count is the server command's: its main process and its --workers."""
    app = AppSpec("app", parse_procfile(f"{kind}: app:application\n"), env, {kind: 2},
                  AppSettings(idle_timeout=idle))
    command = server_command(kind, "app:application", env, bool(idle)).command
    assert 1 + int(command.split("--workers ")[1].split()[0]) == per_slot
    assert process_counts(app) == {kind: 2 * per_slot}


@pytest.mark.parametrize("ceilings, others, message", [
    (Ceilings(13, 100), 0, "app: the Procfile and envs/app/SCALING ask for 14 processes "
     "(wsgi: 10, worker: 3, cron1: 1); max_processes_per_app is 13 (pikud.toml)"),
    (Ceilings(14, 100), 87, "ask for 14 processes (wsgi: 10, worker: 3, cron1: 1), and the "
     "other apps run 87: 101 in all; max_processes is 100 (pikud.toml)"),
])
def test_a_formation_over_a_ceiling_names_the_setting_and_the_figures(
        ceilings: Ceilings, others: int, message: str) -> None:
    app = spec("wsgi: app:application\nworker: w\ncron1: * * * * * c\n",
               {"wsgi": 2, "worker": 3}, UWSGI_PROCESSES="4")
    with pytest.raises(TooManyProcesses) as info:
        admit(app, ceilings, others)
    assert message in str(info.value)


def test_many_kinds_are_summed_and_summarised() -> None:
    kinds = [f"w{i}" for i in range(10_000)]
    app = spec("".join(f"{kind}: sleep 1\n" for kind in kinds), dict.fromkeys(kinds, 1))
    with pytest.raises(TooManyProcesses, match=r"10000 processes \(w0: 1, w1: 1, w2: 1 and "
                       r"9997 more kinds\); max_processes_per_app is 100"):
        admit(app, Ceilings(), 0)


def test_ceiling_settings(tmp_path: Path) -> None:
    path = tmp_path / "pikud.toml"
    assert load_settings(path).ceilings == Ceilings(100, 1000)
    path.write_text("max_processes_per_app = 5\nmax_processes = 5\n")
    assert load_settings(path).ceilings == Ceilings(5, 5)


@pytest.mark.parametrize("text, message", [
    ("max_processes_per_app = 0\n", "max_processes_per_app must be a whole number from 1 to "
     "100000, got 0"),
    ("max_processes = 1.5\n", "max_processes must be a whole number from 1 to 100000, got 1.5"),
    ("max_processes = true\n", "max_processes must be a whole number"),
    ("max_processes_per_app = 200\nmax_processes = 100\n",
     "max_processes_per_app (200) is more than max_processes (100)"),
])
def test_bad_ceiling_settings_name_the_key_and_the_figure(tmp_path: Path, text: str,
                                                          message: str) -> None:
    path = tmp_path / "pikud.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_settings(path)
    assert message in str(info.value)


def test_a_spawn_must_leave_the_reserve_free() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    free = soft - open_descriptors()
    check_headroom(live=free - RESERVE - 10)
    with pytest.raises(OSError) as info:
        check_headroom(live=free - RESERVE)
    assert info.value.errno == errno.EMFILE and "descriptors are free" in str(info.value)
