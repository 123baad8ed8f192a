"""A tiny client for pikud's control socket (stdlib only: the CLI imports it).

HTTP/1.1 over ``AF_UNIX`` (``wire``; not ``http.client``, whose imports would
double the CLI's start-up), one connection per call. ``request()``
returns the envelope's ``data``; ``stream()`` yields NDJSON objects as they
arrive. Every failure leaves this module as a ``PikudError``: OS errors are
translated by ``map_exceptions`` at the socket, error envelopes become
``RemoteError`` with the server's code and message.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from pikud.control.protocol import NDJSON
from pikud.control.wire import Response, send_request
from pikud.errors import ControlError, DaemonNotRunning, PikudError, ProtocolError

ErrorMap = Mapping[type[Exception], Callable[[Exception], PikudError]]


class RemoteError(PikudError):
    """pikud refused a request; ``code`` and ``status`` are the server's own."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@contextmanager
def map_exceptions(mapping: ErrorMap) -> Iterator[None]:
    """Re-raise an exception as the PikudError its first matching entry builds."""
    try:
        yield
    except Exception as exc:
        for kind, build in mapping.items():
            if isinstance(exc, kind):
                raise build(exc) from exc
        raise


class Client:
    """Calls pikud's routes; ``timeout`` bounds each socket operation (None: wait)."""

    def __init__(self, socket_path: Path, timeout: float | None = 30,
                 caller: Mapping[str, str] | None = None) -> None:
        """``caller``: the headers that name the key the requests are made for."""
        self.socket_path = Path(socket_path)
        self.timeout = timeout
        self.caller = dict(caller or {})
        where = self.socket_path
        # Order matters: the first matching class wins, OSError last.
        self._errors: ErrorMap = {
            FileNotFoundError: lambda e: DaemonNotRunning(
                f"pikud is not running (no socket at {where})"),
            ConnectionRefusedError: lambda e: DaemonNotRunning(
                f"pikud is not running (nothing listens on {where})"),
            PermissionError: lambda e: ControlError(
                f"permission denied on {where}: run piku as the user pikud runs as"),
            TimeoutError: lambda e: ControlError(f"pikud did not answer within {self.timeout}s"),
            OSError: lambda e: ControlError(f"cannot talk to pikud at {where}: {e}"),
        }

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """Send one request and return the ``data`` of its envelope."""
        with (closing(self._connect()) as sock, map_exceptions(self._errors),
              closing(self._send(sock, method, path, body)) as response):
            raw = response.read()
        return _unwrap(response.status, raw)

    def stream(self, method: str, path: str, body: dict[str, Any] | None = None
               ) -> Generator[dict[str, Any], None, None]:
        """Yield each NDJSON object as its line arrives, the last being ``{"end": true, ...}``.

        Once the headers are in, reads wait without a timeout: a followed log
        may stay quiet for hours. An ``{"error": ...}`` line raises RemoteError.
        """
        with closing(self._connect()) as sock:
            with map_exceptions(self._errors):
                response = self._send(sock, method, path, body)
            with closing(response):
                content_type = response.header("Content-Type").partition(";")[0].strip()
                if content_type != NDJSON:
                    with map_exceptions(self._errors):
                        raw = response.read()
                    _unwrap(response.status, raw)
                    raise ProtocolError(
                        f"{method} {path}: pikud answered {content_type!r}, not a stream")
                sock.settimeout(None)
                while True:
                    with map_exceptions(self._errors):
                        line = response.readline()
                    if not line:
                        raise ProtocolError("pikud closed the stream before its end")
                    if not line.strip():
                        continue
                    obj = _decode(line)
                    if not isinstance(obj, dict):
                        raise ProtocolError(
                            f"pikud sent a stream line that is not an object: {line!r}")
                    if "error" in obj:
                        raise _remote_error(obj["error"], response.status)
                    yield obj
                    if obj.get("end") is True:
                        return

    def _connect(self) -> socket.socket:
        """A socket connected to pikud, with the timeout set."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with map_exceptions(self._errors):
                sock.settimeout(self.timeout)
                sock.connect(str(self.socket_path))
        except BaseException:
            sock.close()
            raise
        return sock

    def _send(self, sock: socket.socket, method: str, path: str,
              body: dict[str, Any] | None) -> Response:
        """Write the request; the response once its headers are in."""
        headers = {"Accept": f"application/json, {NDJSON}", **self.caller}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        send_request(sock, method, path, headers, payload)
        return Response(sock)


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ProtocolError(f"pikud sent malformed JSON ({exc}): {raw[:200]!r}") from exc


def _unwrap(status: int, raw: bytes) -> Any:
    """The ``data`` of an ok envelope; anything else raises."""
    try:
        envelope = json.loads(raw)
    except ValueError:
        envelope = None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("ok"), bool):
        raise ProtocolError(f"pikud answered HTTP {status} without an envelope: {raw[:200]!r}")
    if envelope["ok"]:
        return envelope.get("data")
    raise _remote_error(envelope.get("error"), status)


def _remote_error(error: Any, status: int) -> PikudError:
    if not isinstance(error, dict) or not isinstance(error.get("message"), str):
        return ProtocolError(f"pikud sent a malformed error: {error!r}")
    return RemoteError(str(error.get("code") or "error"), error["message"], status)
