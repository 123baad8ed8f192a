"""The server commands behind wsgi/asgi entries, and which server an app gets."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from pikud.deploy.servers import (
    check_installed,
    ignored_settings,
    server_command,
    servers_to_install,
)
from pikud.errors import EnvError


@pytest.mark.parametrize("kind, env, on_demand, server, inherits", [
    ("wsgi", {}, False, "granian", False),
    ("asgi", {}, False, "granian", False),
    ("wsgi", {"PIKU_WSGI_SERVER": "gunicorn"}, False, "gunicorn", True),
    ("asgi", {"PIKU_ASGI_SERVER": "uvicorn"}, False, "uvicorn", True),
    ("wsgi", {}, True, "gunicorn", True),          # on demand needs the daemon's socket
    ("asgi", {}, True, "uvicorn", True),
])
def test_which_server(kind: str, env: dict[str, str], on_demand: bool, server: str,
                      inherits: bool) -> None:
    command = server_command(kind, "app:app", env, on_demand)
    assert (command.package, command.inherits) == (server, inherits)
    assert command.command.startswith(f"exec {server} ")


def test_uwsgi_idle_is_no_longer_reported_as_ignored() -> None:
    assert server_command("wsgi", "app:app", {"UWSGI_IDLE": "60"}, True).notes == ()
    assert server_command("wsgi", "app:app", {"UWSGI_GEVENT": "1"}).notes == ("UWSGI_GEVENT",)


UWSGI = {"UWSGI_PROCESSES": "3", "UWSGI_THREADS": "5", "UWSGI_MAX_REQUESTS": "900",
         "UWSGI_LISTEN": "77"}


@pytest.mark.parametrize("kind, server, options, ignored", [
    ("wsgi", "granian", {"--workers": "3", "--blocking-threads": "5", "--backlog": "128"},
     ["UWSGI_MAX_REQUESTS", "UWSGI_LISTEN below 128 (granian's minimum; 128 is used)"]),
    ("wsgi", "gunicorn", {"--workers": "3", "--threads": "5", "--max-requests": "900",
                          "--backlog": "77"}, []),
    ("asgi", "uvicorn", {"--workers": "3", "--limit-max-requests": "900", "--backlog": "77"},
     ["UWSGI_THREADS"]),
])
def test_uwsgi_settings_map_onto_each_server(kind: str, server: str, options: dict[str, str],
                                             ignored: list[str]) -> None:
    env = {**UWSGI, f"PIKU_{kind.upper()}_SERVER": server}
    words = shlex.split(server_command(kind, "app:app", env).command.replace("$PORT", "1"))
    assert {option: words[words.index(option) + 1] for option in options} == options
    assert server_command(kind, "app:app", env).notes == tuple(ignored)
    assert ignored_settings({kind: "app:app"}, env) == [
        f"{key} has no meaning for the {kind} server pikud runs ({server}); it is ignored"
        for key in ignored]


def options(kind: str, env: dict[str, str]) -> list[str]:
    return shlex.split(server_command(kind, "app:app", env).command.replace("$PORT", "1"))


def test_a_wsgi_app_gets_one_granian_worker_with_two_runtime_threads_unless_it_asks() -> None:
    words = options("wsgi", {})
    assert words[words.index("--workers") + 1] == "1"
    assert words[words.index("--runtime-threads") + 1] == "2"
    words = options("wsgi", {"UWSGI_PROCESSES": "2"})
    assert words[words.index("--workers") + 1] == "2" and "--runtime-threads" not in words
    words = options("asgi", {})             # not measured: as before, UWSGI_PROCESSES' 2
    assert words[words.index("--workers") + 1] == "2" and "--runtime-threads" not in words


def test_granian_replaces_a_failed_worker_itself() -> None:
    words = shlex.split(server_command("wsgi", "app:app", {}).command)
    assert "--respawn-failed-workers" in words
    assert words[words.index("--respawn-interval") + 1] == "1"


def test_uwsgi_settings_without_a_server_are_reported() -> None:
    env = {"UWSGI_PROCESSES": "4", "UWSGI_IDLE": "60", "UWSGI_LOG_MAXSIZE": "1048576",
           "PORT": "5000"}
    assert ignored_settings({"web": "python3 app.py"}, env) == [
        "UWSGI_PROCESSES has no meaning without a wsgi or asgi entry; it is ignored"]


@pytest.mark.parametrize("env, key", [
    ({"PIKU_WSGI_SERVER": "granian", "UWSGI_IDLE": "60"}, "PIKU_WSGI_SERVER"),
    ({"PIKU_WSGI_SERVER": "granian", "PIKU_IDLE_TIMEOUT": "60"}, "PIKU_WSGI_SERVER"),
])
def test_granian_cannot_start_on_demand(env: dict[str, str], key: str) -> None:
    with pytest.raises(EnvError) as info:
        servers_to_install({"wsgi": "app:app"}, env, on_demand=True)
    assert info.value.key == key
    idle = "PIKU_IDLE_TIMEOUT" if "PIKU_IDLE_TIMEOUT" in env else "UWSGI_IDLE"
    assert str(info.value).startswith(f"{key}: granian cannot take the daemon's socket, "
                                      f"which {idle} needs")


def test_a_build_installs_both_servers_of_each_kind() -> None:
    """So config:set can switch servers, or turn scale to zero on, without a rebuild."""
    assert servers_to_install({"wsgi": "app:app"}, {}) == ("granian", "gunicorn")
    assert servers_to_install({"asgi": "app:app"}, {}) == ("granian", "uvicorn")
    assert servers_to_install({"wsgi": "a:b", "asgi": "c:d"}, {}) == \
        ("granian", "gunicorn", "uvicorn")
    assert servers_to_install({"web": "python app.py"}, {}) == ()


@pytest.mark.parametrize("env, on_demand, key", [
    ({"PIKU_IDLE_TIMEOUT": "60"}, True, "PIKU_IDLE_TIMEOUT"),
    ({"UWSGI_IDLE": "60"}, True, "UWSGI_IDLE"),
    ({"PIKU_WSGI_SERVER": "gunicorn"}, False, "PIKU_WSGI_SERVER"),
])
def test_a_server_missing_from_an_older_build_is_refused(
        tmp_path: Path, env: dict[str, str], on_demand: bool, key: str) -> None:
    (tmp_path / "granian").touch()                  # built before both servers went in
    check_installed({"wsgi": "app:app"}, {}, False, tmp_path)
    with pytest.raises(EnvError) as info:
        check_installed({"wsgi": "app:app"}, env, on_demand, tmp_path)
    assert info.value.key == key
    assert str(info.value) == (f"{key}: the wsgi entry would run gunicorn, which this "
                               "release's environment was built without; deploy again "
                               "(piku deploy APP) to add it")
