"""Arbitrary requests against a real daemon (hypothesis): refused by name, never a 500.

Each test starts one `pikud serve` and sends it every example: arbitrary JSON
and near-valid bodies to each route that reads one, arbitrary app and kind
names in the path and query, bodies that are not JSON, too large or nested
too deep. Every answer must be a success or the error envelope with a named
code and status below 500; afterwards the same daemon answers /status and
its log holds no traceback.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from pikud.control.client import RemoteError
from pikud.control.protocol import MAX_BODY
from tests.conftest import FAST, Pikud, examples
from tests.integration.test_control import post, raw_request
from tests.strategies import ANY_CHAR, HUGE, spliced


def on_one_daemon(count: int) -> settings:
    """``count`` examples (scaled by the profile), all sent to the test's one daemon."""
    return settings(max_examples=examples(count), suppress_health_check=[
        HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


PROCFILE = "worker: sleep 300\ncron1: 0 0 1 1 * true\n"

TEXT = st.text(ANY_CHAR, max_size=20)
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12)
# Each a third valid, so that many examples get past the checks and change the app.
COUNT: st.SearchStrategy[Any] = st.integers(0, 3) | st.sampled_from(
    [-1, 1001, 10 ** 30, "2", " 1", 2.0, 2.5, True, None, math.inf, math.nan, [], {}, HUGE]) | JSON
KIND = st.just("worker") | st.sampled_from(["cron1", "web", "nope", "worker=1", ""]) | TEXT
KEY = st.sampled_from(["A", "PIKU_AUTO_RESTART", "PIKU_STOP_TIMEOUT", "PIKU_START_RETRIES",
                       "PIKU_LOG_MAXSIZE", "PIKU_HEALTHCHECK", "PIKU_TOUCH_RELOAD", "TZ",
                       "PIKU_CRON_OVERLAP", "NGINX_SERVER_NAME", "NGINX_HTTP_PORT", "PORT"]) \
    | st.sampled_from(["BAD KEY", "1A", "", "A=B"]) | TEXT
VALUE = st.sampled_from(["1", "0", "true", "3s", "Europe/Berlin", "/health", "a.com", "$A"]) \
    | st.sampled_from(["Mars/Base", "${", "'", "\n", "\x00", "\ud800", HUGE]) \
    | spliced(["1", "s", "$", "{", "}", "'", '"', "\\", "#", " ", "/", ".."], 8) | TEXT
REVISION = st.sampled_from(["a" * 40, "0" * 40, "A" * 40, "a" * 39, "a" * 64, ""]) | TEXT
PUSH = st.fixed_dictionaries({}, optional={
    "revision": REVISION, "ref": st.sampled_from(["refs/heads/main", "-x", "\x00"]) | TEXT,
    "old": REVISION, "pusher": TEXT, "fingerprint": TEXT,
    "git_env": st.dictionaries(st.sampled_from(["GIT_OBJECT_DIRECTORY", "GIT_QUARANTINE_PATH",
                                                "GIT_ALTERNATE_OBJECT_DIRECTORIES"]) | TEXT,
                               st.sampled_from(["objects", "../x", "/etc", "a\x00b"]) | TEXT,
                               max_size=2),
    "extra": JSON})
BODIES = {
    "/apps/a/scale": st.fixed_dictionaries({"scaling": st.dictionaries(KIND, COUNT, min_size=1,
                                                                      max_size=2)}),
    "/apps/a/config": st.fixed_dictionaries({"set": st.dictionaries(KEY, VALUE, min_size=1,
                                                                    max_size=2)},
                                            optional={"unset": st.lists(KEY, max_size=1)}),
    "/apps/a/deploy": PUSH,
    "/apps/a/rollback": st.fixed_dictionaries({"release": COUNT}),
}
READ_BODY = sorted(BODIES)
BODIES["/apps/a/cron/cron1/run"] = JSON      # ignores its body
CHANGES = {     # bodies that change the app, so that later examples meet a changed one
    "/apps/a/scale": st.fixed_dictionaries({"scaling": st.fixed_dictionaries(
        {"worker": st.integers(0, 3)})}),
    "/apps/a/config": st.fixed_dictionaries({"set": st.dictionaries(
        st.sampled_from(["A", "B", "PIKU_AUTO_RESTART", "TZ"]),
        st.sampled_from(["", "1", "no", "UTC", "x y", "$B", "'q'"]) | TEXT, min_size=1)}),
}
REQUEST = st.sampled_from(sorted(BODIES)).flatmap(lambda route: st.tuples(
    st.just(route), st.one_of(CHANGES.get(route, BODIES[route]), BODIES[route], JSON)))


@pytest.fixture
def daemon(pikud: Pikud) -> Iterator[Pikud]:
    """The daemon with app ``a`` deployed (it has a git repo) and ``b`` placed by hand.

    At the end the daemon must still serve, and its log hold no traceback.
    """
    pikud.add_app("a", PROCFILE, FAST)
    subprocess.run(["git", "init", "--quiet", "--bare", str(pikud.root / "repos/a")], check=True)
    pikud.api("POST", "/apps/a/deploy")
    pikud.add_app("b", PROCFILE, FAST)
    yield pikud
    assert pikud.proc is not None and pikud.api("GET", "/status")["pid"] == pikud.proc.pid
    assert "Traceback" not in pikud.output(), pikud.output()[-4000:]


def answer(pikud: Pikud, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    """(status, envelope) of one request; an error envelope must carry a named code."""
    try:
        data = pikud.api(method, path, body)
    except RemoteError as refused:
        assert refused.status < 500 and refused.code not in ("error", "internal_error"), \
            f"{method} {path} {body!r}: {refused.status} {refused.code}: {refused}"
        assert str(refused)
        return refused.status, {"ok": False, "error": {"code": refused.code,
                                                       "message": str(refused)}}
    return 200, {"ok": True, "data": data}


def names_one_of(message: str, given: list[str]) -> bool:
    """Whether ``message`` holds one of ``given`` as it is or escaped as repr() does."""
    return any(text in message or repr(text)[1:-1] in message for text in given)


@given(call=REQUEST)
# Each was a 500: a lone surrogate could not be written to envs/a/ENV; a push to an app
# without a repo ran git in a missing folder; a NUL in the ref reached git's argv.
@example(call=("/apps/a/config", {"set": {"A": "\ud800"}}))
@example(call=("/apps/b/deploy", {"revision": "a" * 40}))
@example(call=("/apps/a/deploy", {"revision": "a" * 40, "ref": "refs/heads/\x00"}))
@on_one_daemon(80)
def test_bodies_are_refused_by_name_or_applied(daemon: Pikud, call: tuple[str, Any]) -> None:
    route, payload = call
    status, envelope = answer(daemon, "POST", route, payload)
    event(f"{route}: {envelope['error']['code'] if status != 200 else 'ok'}")
    if status == 400 and envelope["error"]["code"] == "invalid_spec" and route.endswith(
            ("/config", "/scale")) and isinstance(payload, dict):
        given = [str(k) for part in ("set", "unset", "scaling") for k in payload.get(part, ())]
        assert names_one_of(envelope["error"]["message"], given), envelope


NAME = st.text(ANY_CHAR, max_size=70) | spliced(["a", ".", "..", "/", "%", "-", "_", "?", "#",
                                                 " ", "\x00", "é"], 70)


@given(name=NAME, kind=NAME, query=st.fixed_dictionaries({}, optional={
    "lines": NAME | st.sampled_from(["²", "٣", HUGE]), "kind": NAME, "app": NAME}))
@example(name="a", kind="cron1", query={"lines": "²"})
@example(name="a", kind="cron1", query={"lines": HUGE})
@on_one_daemon(60)
def test_names_in_the_path_and_query_get_an_answer_or_a_4xx(daemon: Pikud, name: str, kind: str,
                                                            query: dict[str, str]) -> None:
    app, job = (quote(text, safe="", errors="surrogatepass") for text in (name, kind))
    args = urlencode(query, errors="surrogatepass")
    for method, path in (("GET", f"/apps/{app}"), ("GET", f"/apps/{app}/config"),
                         ("GET", f"/apps/{app}/logs?{args}"), ("GET", f"/events?{args}"),
                         ("POST", f"/apps/{app}/cron/{job}/run"), ("POST", f"/apps/{app}/scale")):
        answer(daemon, method, path, {"scaling": {"worker": 1}} if method == "POST" else None)


def test_config_checks_the_cron_settings_even_when_nothing_restarts(daemon: Pikud) -> None:
    """Found by the fuzzing: TZ=a.com was accepted with PIKU_AUTO_RESTART=no, then every
    later change of the app (ps:scale, restart) failed on it."""
    answer(daemon, "POST", "/apps/a/config", {"set": {"PIKU_AUTO_RESTART": "no"}})
    status, envelope = answer(daemon, "POST", "/apps/a/config", {"set": {"TZ": "a.com"}})
    assert (status, envelope["error"]["code"]) == (400, "invalid_spec")
    assert envelope["error"]["message"].startswith("TZ: unknown time zone 'a.com'")
    assert "TZ" not in daemon.api("GET", "/apps/a/config")["config"]
    assert answer(daemon, "POST", "/apps/a/scale", {"scaling": {"worker": 2}})[0] == 200


def nested(depth: int) -> bytes:
    return b'{"set": ' * depth + b"{}" + b"}" * depth


NOT_JSON_OBJECTS = {
    "deep list": b"[" * 30_000 + b"]" * 30_000,     # within MAX_BODY, past the recursion limit
    "deep object": nested(5_000),
    "too large": b'{"set": {"A": "' + b"x" * MAX_BODY + b'"}}',
    "not UTF-8": b'{"set": {"A": "\xff\xfe"}}',
    "huge number": b'{"release": 1' + b"0" * 5000 + b"}",
    "NUL bytes": b"\x00" * 100,
    "a list": b"[]",
}


def test_bodies_that_are_not_json_objects_are_refused(daemon: Pikud) -> None:
    sock = str(daemon.root / "pikud.sock")
    for what, payload in NOT_JSON_OBJECTS.items():
        for route in READ_BODY:
            status, envelope = raw_request(sock, post(route, payload))
            assert 400 <= status < 500 and envelope["ok"] is False, (what, route, envelope)
            assert envelope["error"]["message"]
