"""The server commands behind wsgi/asgi entries, and which server an app gets."""

from __future__ import annotations

import pytest

from pikud.deploy.servers import server_command, servers_needed
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


@pytest.mark.parametrize("env, key", [
    ({"PIKU_WSGI_SERVER": "granian", "UWSGI_IDLE": "60"}, "PIKU_WSGI_SERVER"),
    ({"PIKU_WSGI_SERVER": "granian", "PIKU_IDLE_TIMEOUT": "60"}, "PIKU_WSGI_SERVER"),
])
def test_granian_cannot_start_on_demand(env: dict[str, str], key: str) -> None:
    with pytest.raises(EnvError) as info:
        servers_needed({"wsgi": "app:app"}, env, on_demand=True)
    assert info.value.key == key
    idle = "PIKU_IDLE_TIMEOUT" if "PIKU_IDLE_TIMEOUT" in env else "UWSGI_IDLE"
    assert str(info.value).startswith(f"{key}: granian cannot take the daemon's socket, "
                                      f"which {idle} needs")
