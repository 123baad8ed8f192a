"""The control client's own HTTP/1.1 (pikud.control.wire) against answers written byte by
byte on a real unix socket: the framings and faults a well-behaved server never sends."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest

from pikud.control.client import Client
from pikud.errors import ProtocolError

DEADLINE = 10.0


class RawServer:
    """Answers one connection with ``answer`` as given, then closes; keeps the request."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.path, self.answer = path, answer
        self.request = b""
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(1)
        self.listener.settimeout(DEADLINE)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            conn.settimeout(DEADLINE)
            while b"\r\n\r\n" not in self.request:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                self.request += chunk
            head, _, body = self.request.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.request = head + b"\r\n\r\n" + body
            conn.sendall(self.answer)

    def close(self) -> None:
        self.thread.join(DEADLINE)
        self.listener.close()
        assert not self.thread.is_alive()


@pytest.fixture
def serve(short_root: Path) -> Iterator[Callable[[bytes], Client]]:
    servers: list[RawServer] = []

    def client(answer: bytes) -> Client:
        servers.append(RawServer(short_root / "raw.sock", answer))
        return Client(short_root / "raw.sock", timeout=DEADLINE)
    yield client
    for server in servers:
        server.close()


ENVELOPE = b'{"ok": true, "data": 7}'


def test_a_body_without_length_ends_with_the_connection(serve: Callable[[bytes], Client]) -> None:
    client = serve(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + ENVELOPE)
    assert client.request("GET", "/x") == 7


def test_a_chunked_body_is_joined(serve: Callable[[bytes], Client]) -> None:
    client = serve(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5;ext=1\r\n" + ENVELOPE[:5] + b"\r\n"
                   + b"%x\r\n" % (len(ENVELOPE) - 5) + ENVELOPE[5:] + b"\r\n0\r\n\r\n")
    assert client.request("GET", "/x") == 7


def test_a_stream_line_split_over_chunks_arrives_whole(serve: Callable[[bytes], Client]) -> None:
    lines = b'{"n": 1}\n{"end": true}\n'
    client = serve(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n"
                   b"3\r\n" + lines[:3] + b"\r\n%x\r\n" % (len(lines) - 3) + lines[3:]
                   + b"\r\n0\r\n\r\n")
    with closing(client.stream("GET", "/s")) as stream:
        assert list(stream) == [{"n": 1}, {"end": True}]


@pytest.mark.parametrize(("answer", "match"), [
    (b"SMTP ready\r\n\r\n", "status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + ENVELOPE, "after 23 of its 100"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n" + ENVELOPE, "cut short"),
])
def test_malformed_http_is_a_protocol_error(serve: Callable[[bytes], Client], answer: bytes,
                                            match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        serve(answer).request("GET", "/x")


def test_the_request_carries_its_body_and_the_callers_headers(short_root: Path) -> None:
    server = RawServer(short_root / "raw.sock", b"HTTP/1.1 200 OK\r\nContent-Length: 23\r\n\r\n"
                       + ENVELOPE)
    try:
        client = Client(server.path, timeout=DEADLINE, caller={"X-Piku-Key": "alice"})
        assert client.request("POST", "/apps/a/scale", {"web": 2}) == 7
    finally:
        server.close()
    head, _, body = server.request.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /apps/a/scale HTTP/1.1"
    assert {b"X-Piku-Key: alice", b"Content-Type: application/json",
            b"Content-Length: %d" % len(body)} <= set(lines)
    assert body == b'{"web": 2}'


def test_a_line_break_in_a_header_is_refused(short_root: Path) -> None:
    server = RawServer(short_root / "raw.sock", b"")
    try:
        client = Client(server.path, timeout=DEADLINE, caller={"X-Piku-Key": "a\r\nX-Evil: 1"})
        with pytest.raises(ProtocolError, match="line break"):
            client.request("GET", "/apps")
    finally:
        server.close()
