"""pikud.deploy.spec: the warnings a push reports about a spec it uses."""

from __future__ import annotations

from pikud.appsettings import AppSettings
from pikud.appspec import AppSpec, Procfile
from pikud.deploy.spec import spec_warnings


def test_spec_warnings_gather_the_parsers_the_servers_and_nginx() -> None:
    spec = AppSpec("app", Procfile({"asgi": "main:app"}),
                   {"UWSGI_GEVENT": "1", "NGINX_HTTPS_ONY": "1", "NGINX_SERVER_NAME": "a.example"},
                   {"asgi": 1}, AppSettings(), ("Procfile, line 3: duplicate kind 'asgi'",))
    assert spec_warnings(spec) == (
        "Procfile, line 3: duplicate kind 'asgi'",
        "UWSGI_GEVENT has no meaning for the asgi server pikud runs (granian); it is ignored",
        "NGINX_HTTPS_ONY is not an nginx setting pikud knows; it is ignored "
        "(did you mean NGINX_HTTPS_ONLY?)")
