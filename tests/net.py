"""Loopback helpers for the tests and the benchmarks (stdlib only): a free port, a
small HTTP server in a thread of the test's own process, and a connection as another user.

The apps' own servers (strings a test writes into an app's folder) stay apart:
they are app code, run by pikud, not helpers.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import socketserver
import subprocess
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port(family: socket.AddressFamily = socket.AF_INET, host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (bound, then released: nothing listens)."""
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


Answer = tuple[int, str, bytes]                     # status, content type, body
Respond = Callable[[BaseHTTPRequestHandler], Answer]   # reads .path, .headers


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


class HttpServer:
    """Answers every GET with ``respond(request)``, on a loopback port or a unix socket.

    HTTP/1.1 with keep-alive, a thread per connection; the socket listens as
    soon as the object exists. A unix socket is made 0666, so that nginx's
    workers reach it whatever user they run as.
    """

    def __init__(self, respond: Respond, unix: Path | None = None) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                status, content_type, body = respond(self)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def address_string(self) -> str:       # a unix peer has no address
                return "-"

            def log_message(self, *args: object) -> None:
                pass

        self.server: socketserver.BaseServer
        if unix is None:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.port: int | None = int(self.server.server_address[1])
            self.upstream = f"127.0.0.1:{self.port}"
        else:
            self.server = _UnixHTTPServer(str(unix), Handler)
            os.chmod(unix, 0o666)
            self.port, self.upstream = None, f"unix:{unix}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


def connects_as(user: str, path: Path | int) -> str:
    """What ``user`` (as root can make it: its own groups only) gets connecting to a unix
    socket's ``path`` or a loopback port: "ok" or the errno's name."""
    code = ("import errno, socket, sys\nwhere = sys.argv[1]\n"
            "s = socket.socket(socket.AF_INET if where.isdigit() else socket.AF_UNIX)\n"
            "try:\n    s.connect(('127.0.0.1', int(where)) if where.isdigit() else where)\n"
            "    print('ok')\nexcept OSError as e:\n    print(errno.errorcode[e.errno])\n")
    # the system's python: this one may live in a folder other users cannot enter
    gid = pwd.getpwnam(user).pw_gid                 # its own groups, none of root's
    done = subprocess.run(["/usr/bin/python3", "-c", code, str(path)], user=user, group=gid,
                          extra_groups=[g.gr_gid for g in grp.getgrall() if user in g.gr_mem],
                          cwd="/", capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()
