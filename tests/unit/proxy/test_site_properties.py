"""Properties of an app's NGINX_* settings under arbitrary values (hypothesis).

site_from_env either builds a site, which then renders (its quoting filter
never meets a value validation let through), or raises an EnvError that
starts with the key it refused (a ProcfileError for the Procfile's static).
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pikud.errors import EnvError, ProcfileError
from pikud.paths import Paths
from pikud.proxy.render import render
from pikud.proxy.site import KEYS, site_from_env
from tests.conftest import examples
from tests.strategies import FILE_CHAR, HUGE, spliced

PATHS = Paths(Path("/srv/pikud-fuzz"))      # never created: an include cannot be read
APP = "my-app"
VALUE_TOKENS = ["example.com", "*.a.org", "a-b", ",", ":", "/", "/static", "public", "..", ".",
                "../..", "/etc", "1", "0", "80", "443", "65536", "true", "no", "::", "[::1]",
                "127.0.0.1", ";", "{", "}", "$", '"', "'", "#", " ", "\t", "\n", "\x00",
                "é", "~", HUGE]
VALUE = st.one_of(st.text(FILE_CHAR, max_size=30), spliced(VALUE_TOKENS, 12))
ENV = st.dictionaries(st.sampled_from(sorted(KEYS | {"DISABLE_IPV6"})), VALUE, max_size=5)


@given(env=ENV, server_name=st.sampled_from(["example.com", "a.com, *.b.org"]) | VALUE,
       static=st.none() | VALUE)
@settings(max_examples=examples(150))
def test_nginx_settings_build_a_site_that_renders_or_name_the_key(
        env: dict[str, str], server_name: str, static: str | None) -> None:
    env = {**env, "NGINX_SERVER_NAME": server_name}
    try:
        site = site_from_env(APP, env, ("127.0.0.1:5000", "unix:/srv/a.sock"), PATHS,
                             PATHS.app(APP), static=static)
    except ProcfileError as error:
        assert static is not None and str(error).startswith("Procfile: static: ")
    except EnvError as error:
        assert error.key in env and str(error).startswith(f"{error.key}: "), error
    else:
        if site is not None:
            for style in ("on", "listen", "off"):
                assert f"server_name {' '.join(site.server_names)};" in render(
                    site, http2_style=style)
