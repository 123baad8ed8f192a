"""A real HTTP server on a real unix socket that answers canned replies.

It stands where pikud's control server stands, so the client and the CLI are
exercised over the real transport (http.client, AF_UNIX, chunked NDJSON)
without the daemon. Every request is recorded for the test to check.
"""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

GATE_TIMEOUT = 5.0


@dataclass
class Reply:
    """What to answer: a JSON ``body``, NDJSON ``lines`` or ``raw`` bytes.

    ``pause_after``: after that many lines, wait for ``StubDaemon.gate``.
    ``cut``: drop the connection after the lines, mid-stream.
    ``hang``: answer nothing until the gate opens.
    """

    status: int = 200
    body: Any = None
    lines: list[Any] | None = None
    raw: bytes | None = None
    pause_after: int | None = None
    cut: bool = False
    hang: bool = False


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class StubDaemon:
    path: Path
    replies: dict[tuple[str, str], Reply] = field(default_factory=dict)
    requests: list[Seen] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    gate_timed_out: bool = False

    def on(self, method: str, path: str, reply: Reply | None = None, **fields: Any) -> None:
        self.replies[(method, path)] = reply or Reply(**fields)

    def ok(self, method: str, path: str, data: Any) -> None:
        self.on(method, path, body={"ok": True, "data": data})

    def wait_gate(self) -> None:
        if not self.gate.wait(GATE_TIMEOUT):
            self.gate_timed_out = True


def _handler(stub: StubDaemon) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = GATE_TIMEOUT

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: a unix peer has no address to log anyway."""

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            stub.requests.append(Seen(self.command, self.path, dict(self.headers.items()),
                                      json.loads(raw_body) if raw_body else None))
            missing = {"code": "not_found", "message": f"no route {self.path}"}
            reply = stub.replies.get((self.command, self.path)) or Reply(
                404, {"ok": False, "error": missing})
            if reply.hang:
                stub.wait_gate()
                self.close_connection = True
                return
            self.send_response(reply.status)
            if reply.lines is not None:
                self._stream(reply)
                return
            payload = reply.raw if reply.raw is not None else json.dumps(reply.body).encode()
            kind = "text/plain" if reply.raw is not None else "application/json"
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _stream(self, reply: Reply) -> None:
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for n, obj in enumerate(reply.lines or [], start=1):
                data = json.dumps(obj).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                if n == reply.pause_after:
                    stub.wait_gate()
            if reply.cut:
                self.close_connection = True
                return
            self.wfile.write(b"0\r\n\r\n")

        do_GET = do_POST = do_DELETE = _answer

    return Handler


class _Server(socketserver.ThreadingUnixStreamServer):
    block_on_close = True


@contextmanager
def running(path: Path) -> Iterator[StubDaemon]:
    """A stub listening on ``path``; on exit the gate opens and every thread is joined."""
    stub = StubDaemon(path)
    server = _Server(str(path), _handler(stub))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield stub
    finally:
        stub.gate.set()
        server.shutdown()
        server.server_close()
        thread.join(GATE_TIMEOUT)
        assert not thread.is_alive()
