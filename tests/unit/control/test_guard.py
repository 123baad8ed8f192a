"""control/guard.py in front of a real HTTP server on a unix socket: what is audited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from pikud.access.audit import AuditLog
from pikud.access.rules import RuleBook
from pikud.access.tickets import PushTickets
from pikud.control.guard import ACCESS, Access, guard
from pikud.control.http import HttpServer
from pikud.control.protocol import ok
from pikud.control.request import Reply, Request, Route, RouteTable, Stream, Values

from .test_http import accepting

DEADLINE = 5.0


async def test_a_change_whose_client_leaves_is_audited(tmp_path: Path) -> None:
    """config:set, deploy...: the client's leaving cancels the handler (its action, shielded,
    goes on); the audit line is written all the same."""
    entered, cancelled = asyncio.Event(), asyncio.Event()

    async def forever(request: Request) -> Any:
        entered.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()     # the guard's except runs in this same step, before any waiter
            raise

    async def respond(request: Request) -> Reply | Stream:
        assert request.handler is not None
        return Reply(200, ok(await guard(request, handler=request.handler)))

    shared = Values()
    audit = AuditLog(tmp_path / "audit.log", max_bytes=1 << 20, backups=1)
    shared[ACCESS] = Access(RuleBook(tmp_path / "access.json"), PushTickets(), audit)
    server = HttpServer(RouteTable([Route("POST", "/apps/{app}/config", forever)]), shared,
                        respond, idle_timeout=DEADLINE)
    path = await accepting(server, tmp_path)
    try:
        _, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"POST /apps/a/config HTTP/1.1\r\nHost: pikud\r\nContent-Length: 2\r\n\r\n{}")
        async with asyncio.timeout(DEADLINE):
            await entered.wait()
            writer.close()
            await cancelled.wait()
    finally:
        await server.drain(0.1)
    [line] = (tmp_path / "audit.log").read_text().splitlines()
    entry = json.loads(line)
    assert (entry["command"], entry["app"], entry["outcome"]) == ("config:set", "a", "client_left")
