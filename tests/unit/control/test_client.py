"""The control client over a real unix socket, against a real stdlib HTTP server."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from pikud.control.client import Client, RemoteError, map_exceptions
from pikud.errors import ControlError, DaemonNotRunning, PikudError, ProtocolError
from tests.unit.control.stubdaemon import Reply, StubDaemon, running

NOT_FOUND = {"ok": False, "error": {"code": "app_not_found", "message": "app 'x' not found"}}


@pytest.fixture
def stub(short_root: Path) -> Iterator[StubDaemon]:
    with running(short_root / "pikud.sock") as daemon:
        yield daemon


@pytest.fixture
def client(stub: StubDaemon) -> Client:
    return Client(stub.path, timeout=5)


def test_request_returns_the_data(stub: StubDaemon, client: Client) -> None:
    stub.ok("GET", "/apps", {"apps": []})
    assert client.request("GET", "/apps") == {"apps": []}
    assert stub.requests[0].body is None


def test_request_sends_a_json_body(stub: StubDaemon, client: Client) -> None:
    stub.ok("POST", "/apps/a/scale", {"name": "a"})
    assert client.request("POST", "/apps/a/scale", {"scaling": {"web": 2}}) == {"name": "a"}
    seen = stub.requests[0]
    assert (seen.method, seen.path, seen.body) == ("POST", "/apps/a/scale", {"scaling": {"web": 2}})
    assert seen.headers["Content-Type"] == "application/json"


def test_error_envelope_keeps_code_message_and_status(stub: StubDaemon, client: Client) -> None:
    stub.on("GET", "/apps/x", status=404, body=NOT_FOUND)
    with pytest.raises(RemoteError) as info:
        client.request("GET", "/apps/x")
    error = info.value
    assert (error.code, str(error), error.status) == ("app_not_found", "app 'x' not found", 404)
    assert isinstance(info.value, PikudError)


@pytest.mark.parametrize(("reply", "match"), [
    (Reply(raw=b"not json"), "without an envelope"),
    (Reply(500, raw=b"500 Internal Server Error"), "HTTP 500 without an envelope"),
    (Reply(body=[1, 2]), "without an envelope"),
    (Reply(body={"data": 1}), "without an envelope"),
    (Reply(400, body={"ok": False, "error": "bad"}), "malformed error"),
])
def test_malformed_answers_are_protocol_errors(stub: StubDaemon, client: Client, reply: Reply,
                                               match: str) -> None:
    stub.on("GET", "/x", reply)
    with pytest.raises(ProtocolError, match=match):
        client.request("GET", "/x")


def test_no_socket_means_not_running(short_root: Path) -> None:
    path = short_root / "pikud.sock"
    with pytest.raises(DaemonNotRunning, match=f"pikud is not running \\(no socket at {path}\\)"):
        Client(path).request("GET", "/apps")


def test_stale_socket_means_not_running(short_root: Path) -> None:
    path = short_root / "pikud.sock"
    with closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)) as sock:
        sock.bind(str(path))            # bound, never listening: what a dead daemon leaves
    with pytest.raises(DaemonNotRunning, match="nothing listens on"):
        Client(path).request("GET", "/apps")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_is_a_control_error(stub: StubDaemon) -> None:
    stub.path.chmod(0)
    with pytest.raises(ControlError, match="permission denied"):
        Client(stub.path).request("GET", "/apps")


def test_timeout_is_a_control_error(stub: StubDaemon) -> None:
    stub.on("GET", "/slow", hang=True)
    started = time.monotonic()
    with pytest.raises(ControlError, match="did not answer within 0.2s"):
        Client(stub.path, timeout=0.2).request("GET", "/slow")
    assert time.monotonic() - started < 3


def test_dropped_connection_is_a_protocol_error(stub: StubDaemon, client: Client) -> None:
    stub.on("GET", "/drop", Reply(hang=True))
    stub.gate.set()                     # answer nothing, close at once
    with pytest.raises(ProtocolError, match="closed the connection"):
        client.request("GET", "/drop")


def test_stream_yields_lines_until_end(stub: StubDaemon, client: Client) -> None:
    lines = [{"source": "web.1", "line": "a"}, {"source": "web.2", "line": "b"}]
    after = {"source": "x", "line": "after end"}
    stub.on("GET", "/apps/a/logs?follow=1", lines=[*lines, {"end": True}, after])
    assert list(client.stream("GET", "/apps/a/logs?follow=1")) == [*lines, {"end": True}]


def test_stream_delivers_each_line_as_it_arrives(stub: StubDaemon, client: Client) -> None:
    stub.on("GET", "/events?follow=1", lines=[{"n": 1}, {"n": 2}, {"end": True}], pause_after=1)
    with closing(client.stream("GET", "/events?follow=1")) as stream:
        assert next(stream) == {"n": 1}     # while the server still holds back the rest
        stub.gate.set()
        assert list(stream) == [{"n": 2}, {"end": True}]
    assert not stub.gate_timed_out


def test_stream_outlives_the_request_timeout(stub: StubDaemon) -> None:
    stub.on("GET", "/quiet", lines=[{"n": 1}, {"end": True}], pause_after=1)
    with closing(Client(stub.path, timeout=0.1).stream("GET", "/quiet")) as stream:
        assert next(stream) == {"n": 1}
        time.sleep(0.3)                     # longer than the timeout, with nothing to read
        stub.gate.set()
        assert list(stream) == [{"end": True}]


def test_stream_error_line_raises(stub: StubDaemon, client: Client) -> None:
    failed = {"code": "deploy_failed", "message": "build failed"}
    stub.on("GET", "/s", lines=[{"n": 1}, {"error": failed}])
    stream = client.stream("GET", "/s")
    assert next(stream) == {"n": 1}
    with pytest.raises(RemoteError, match="build failed") as info:
        next(stream)
    assert info.value.code == "deploy_failed"


@pytest.mark.parametrize(("reply", "error", "match"), [
    (Reply(lines=[{"n": 1}], cut=True), ProtocolError, "before its end"),
    (Reply(lines=[{"n": 1}]), ProtocolError, "before its end"),
    (Reply(lines=[[1, 2]]), ProtocolError, "not an object"),
    (Reply(404, body=NOT_FOUND), RemoteError, "app 'x' not found"),
    (Reply(body={"ok": True, "data": {}}), ProtocolError, "not a stream"),
])
def test_stream_failures(stub: StubDaemon, client: Client, reply: Reply, error: type[Exception],
                         match: str) -> None:
    stub.on("GET", "/s", reply)
    with pytest.raises(error, match=match):
        list(client.stream("GET", "/s"))


def test_stream_to_a_stopped_daemon(short_root: Path) -> None:
    with pytest.raises(DaemonNotRunning):
        list(Client(short_root / "pikud.sock").stream("GET", "/events?follow=1"))


def test_map_exceptions_translates_the_first_match_only() -> None:
    mapping = {FileNotFoundError: lambda e: DaemonNotRunning("gone"),
               OSError: lambda e: ControlError("os")}
    with pytest.raises(DaemonNotRunning, match="gone") as info, map_exceptions(mapping):
        raise FileNotFoundError("x")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(ControlError, match="os"), map_exceptions(mapping):
        raise ConnectionResetError
    with pytest.raises(KeyError), map_exceptions(mapping):
        raise KeyError("untouched")
