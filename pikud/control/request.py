"""What a control handler sees and returns: the request, a streamed answer, the route table.

The control server (control/http.py) parses HTTP; this module is the shape
the handlers (control/handlers.py, control/access_routes.py) and the guard
(control/guard.py) work with: a ``Request`` with the route's pattern and the
names it matched, the query, the headers and the whole body (up to
protocol.MAX_BODY), a ``Stream`` for NDJSON answers written as they come, and
typed ``Key``s for what the server and each request carry (the registry, the
caller, the audit note).
"""

# Design notes:
# - The body is read before the handler runs (http.py, under the idle
#   timeout); a larger one is remembered as too large and refused only when a
#   handler reads it, so a route that takes no body ignores it, as before.
# - Paths are matched segment by segment after splitting the raw target on
#   "/" and only then percent-decoded, so "%2F" stays inside one name (where
#   validate_app_name refuses it) instead of moving the request to another route.

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast
from urllib.parse import parse_qsl, unquote

from pikud.control.protocol import MAX_BODY
from pikud.errors import BodyTooLarge, MethodNotAllowed, NotFound

T = TypeVar("T")
Handler = Callable[["Request"], Awaitable[Any]]


class Key(Generic[T]):
    """A typed name for a value a ``Values`` holds."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Key({self.name!r})"


class Values:
    """Values by ``Key``: the server's (``request.app``) and each request's own."""

    def __init__(self) -> None:
        self._values: dict[Key[Any], Any] = {}

    def __getitem__(self, key: Key[T]) -> T:
        return cast(T, self._values[key])

    def __setitem__(self, key: Key[T], value: T) -> None:
        self._values[key] = value

    def get(self, key: Key[T]) -> T | None:
        return cast(T | None, self._values.get(key))


class Headers:
    """Request headers by case-insensitive name; the first of repeated ones counts."""

    def __init__(self, fields: Iterable[tuple[str, str]]) -> None:
        self._fields: dict[str, str] = {}
        for name, value in fields:
            self._fields.setdefault(name.lower(), value)

    def get(self, name: str, default: str = "") -> str:
        return self._fields.get(name.lower(), default)


class Sender(Protocol):
    """The connection an answer goes out on (http.py)."""

    async def start(self, status: int, content_type: str, length: int | None) -> None: ...

    async def send(self, data: bytes) -> None: ...


@dataclass(frozen=True)
class Reply:
    """A whole answer: the status and the JSON envelope."""

    status: int
    body: dict[str, Any]


class Stream:
    """An answer written as it comes (NDJSON): ``prepare`` sends the head, ``write`` a
    piece; once the client has left, ``write`` raises ConnectionResetError."""

    def __init__(self, content_type: str) -> None:
        self.content_type = content_type
        self._sender: Sender | None = None

    async def prepare(self, request: Request) -> None:
        self._sender = request.sender
        await self._sender.start(200, self.content_type, None)

    async def write(self, data: bytes) -> None:
        assert self._sender is not None, "write before prepare"
        await self._sender.send(data)


@dataclass
class Request(Values):
    """One request, read whole; ``route`` is the pattern it matched (None: no route did)."""

    method: str
    path: str
    query: dict[str, str]
    headers: Headers
    body: bytes | None              # None: larger than MAX_BODY
    transport: Any                  # asyncio's: get_extra_info("socket") for SO_PEERCRED
    sender: Sender
    app: Values
    handler: Handler                # the route's, or one that answers 404 or 405
    route: str | None = None
    match_info: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        Values.__init__(self)

    @property
    def can_read_body(self) -> bool:
        return self.body != b""

    async def read(self) -> bytes:
        if self.body is None:
            raise BodyTooLarge(f"request body is larger than {MAX_BODY} bytes")
        return self.body


def split_target(target: str) -> tuple[list[str], dict[str, str]]:
    """The raw path's segments (not yet decoded) and the query (the first of repeated keys)."""
    raw_path, _, raw_query = target.partition("#")[0].partition("?")
    query: dict[str, str] = {}
    for name, value in parse_qsl(raw_query, keep_blank_values=True):
        query.setdefault(name, value)
    return raw_path.split("/"), query


@dataclass(frozen=True)
class Route:
    method: str
    pattern: str            # "/apps/{app}/cron/{kind}/run"
    handler: Handler


class RouteTable:
    """Routes by method and pattern; a GET route answers HEAD too."""

    def __init__(self, routes: Iterable[Route]) -> None:
        self._routes = [(route, route.pattern.split("/")) for route in routes]

    def routes(self) -> list[Route]:
        return [route for route, _ in self._routes]

    def resolve(self, method: str, segments: list[str]
                ) -> tuple[Route | None, dict[str, str], Handler]:
        """The route, the names it matched and the handler; with no route, a handler that
        answers not_found (404) or, when the path has routes for other methods, 405."""
        allowed = []
        for route, parts in self._routes:
            names = _match(parts, segments)
            if names is None:
                continue
            if route.method == method or (method == "HEAD" and route.method == "GET"):
                return route, names, route.handler
            allowed.append(route.method)
        path = unquote("/".join(segments))

        async def refuse(request: Request) -> Any:
            if allowed:
                raise MethodNotAllowed(f"{method} {path}: method not allowed "
                                       f"(allowed: {', '.join(allowed)})")
            raise NotFound(f"no route {method} {path}")
        return None, {}, refuse


def _match(parts: list[str], segments: list[str]) -> dict[str, str] | None:
    if len(parts) != len(segments):
        return None
    names = {}
    for part, raw in zip(parts, segments, strict=True):
        segment = unquote(raw)
        if part.startswith("{"):
            if not segment:
                return None
            names[part[1:-1]] = segment
        elif part != segment:
            return None
    return names
