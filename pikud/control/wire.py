"""HTTP/1.1 on one connected socket, as much of it as the control socket needs.

The CLI's start-up time is mostly imports, and ``http.client`` brings ``email``
and ``ssl`` with it; this module is the request writer and response reader the
client needs and nothing more: a request with an optional body, a response whose
body is sized by Content-Length, chunked, or ends with the connection, read
whole or line by line (NDJSON streams). Socket errors pass through as OSError
(the client maps them); anything unreadable is a ProtocolError.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping

from pikud.errors import ProtocolError

MAX_LINE = 65536            # longest status, header or chunk-size line accepted
MAX_HEADERS = 100


def send_request(sock: socket.socket, method: str, path: str, headers: Mapping[str, str],
                 payload: bytes | None) -> None:
    """Write one request, ``Connection: close`` (one request per connection)."""
    fields = {"Host": "pikud", "Accept-Encoding": "identity", "Connection": "close",
              **headers, "Content-Length": str(len(payload or b""))}
    words = [method, path, *fields, *fields.values()]
    if any(ch in word for word in words for ch in "\r\n\0") or " " in method + path:
        raise ProtocolError(f"refusing to send a request with a line break or space in a "
                            f"field: {method} {path!r} {fields!r}")
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in fields.items()) + "\r\n"
    sock.sendall(head.encode("latin-1") + (payload or b""))


class Response:
    """The status line and headers, read at construction; then the body, whole
    (``read``) or a line at a time (``readline``)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")
        try:
            self._read_head()
        except BaseException:
            self._file.close()
            raise

    def _read_head(self) -> None:
        status_line = self._line()
        if not status_line:
            raise ProtocolError("pikud closed the connection without answering")
        version, _, rest = status_line.partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ProtocolError(f"malformed HTTP from pikud: status line {status_line!r}")
        self.status = int(code)
        self.headers: dict[str, str] = {}
        while (line := self._line()) not in (b"\r\n", b"\n"):
            name, colon, value = line.decode("latin-1").partition(":")
            if not colon or len(self.headers) >= MAX_HEADERS:
                raise ProtocolError(f"malformed HTTP from pikud: header line {line!r}")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        length = self.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise ProtocolError(f"malformed HTTP from pikud: Content-Length {length!r}")
        self._left = None if self._chunked or length is None else int(length)
        self._buffer = b""          # chunked: bytes of the body read but not yet returned
        self._done = False

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    def read(self) -> bytes:
        """The rest of the body."""
        if not self._chunked:
            data = self._file.read() if self._left is None else self._file.read(self._left)
            if self._left is not None and len(data) < self._left:
                raise ProtocolError(f"malformed HTTP from pikud: the body ended after "
                                    f"{len(data)} of its {self._left} bytes")
            self._left = 0
            return data
        while self._next_chunk(truncated_ok=False):
            pass
        data, self._buffer = self._buffer, b""
        return data

    def readline(self) -> bytes:
        """The next line of the body with its newline; the rest without one at its end;
        b"" once the body is over (or the connection dropped between chunks)."""
        if not self._chunked:
            if self._left == 0:
                return b""
            line = self._file.readline(MAX_LINE if self._left is None
                                       else min(MAX_LINE, self._left))
            if self._left is not None:
                self._left -= len(line)
            return line
        while b"\n" not in self._buffer and self._next_chunk(truncated_ok=True):
            pass
        line, newline, self._buffer = self._buffer.partition(b"\n")
        return line + newline

    def close(self) -> None:
        self._file.close()

    def _next_chunk(self, truncated_ok: bool) -> bool:
        """Append the next chunk to the buffer; False once the last one was read."""
        if self._done:
            return False
        size_line = self._line()
        if not size_line and truncated_ok:
            self._done = True
            return False
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise ProtocolError(f"malformed HTTP from pikud: chunk size {size_line!r}") from None
        if size == 0:
            while self._line() not in (b"\r\n", b"\n", b""):     # trailers
                pass
            self._done = True
            return False
        data = self._file.read(size)
        if len(data) < size or self._file.read(2) != b"\r\n":
            if truncated_ok:
                self._done = True
                return False
            raise ProtocolError("malformed HTTP from pikud: a chunk was cut short")
        self._buffer += data
        return True

    def _line(self) -> bytes:
        line = self._file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise ProtocolError(f"malformed HTTP from pikud: a line longer than {MAX_LINE} bytes")
        return line
