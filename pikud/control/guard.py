"""The access check in front of every control route (middleware), and the audit of it.

Who asks: the peer's uid must be the daemon's, root, or the deploy user's when
pikud runs as root (identity.py; app users are refused) (SO_PEERCRED); its pid
must not be a process pikud started (access/peer.py); the key it speaks for
is the ``X-Piku-Key`` header the CLI sends from the forced command's NAME (no
header: the console, admin). What it may do: the route's rule
(access/table.py) checked against the rules file (access/gate.py). What is
written down: every request that is not a GET (``POST /access/check`` too) and
every refusal, as one line of the audit log (access/audit.py), also when the
client leaves before the answer (outcome ``client_left``: the action may go
on, shielded); a read that fails for another reason (an app name mistyped) is not.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

from pikud import identity
from pikud.access.audit import AuditLog
from pikud.access.gate import Caller
from pikud.access.peer import ancestors, peer_credentials, started_by_pikud
from pikud.access.rules import RuleBook
from pikud.access.table import BY_ROUTE, Rule, Scope
from pikud.access.tickets import PushTickets
from pikud.control.protocol import FINGERPRINT_HEADER, KEY_HEADER
from pikud.control.request import Handler, Key, Request
from pikud.errors import BadRequest, Forbidden, FromAppProcess, PikudError
from pikud.sshkeys import KEY_NAME


@dataclass
class Access:
    """What the guard and the access routes share: the rules, the push tickets, the log."""

    book: RuleBook
    tickets: PushTickets
    audit: AuditLog


ACCESS: Key[Access] = Key("access")
CALLER: Key[Caller] = Key("caller")
NOTE: Key[dict[str, Any]] = Key("note")


def caller_of(request: Request) -> Caller:
    return request[CALLER]


def note(request: Request, **fields: Any) -> None:
    """Add to (or correct) the audit line of this request: the outcome of a stream, the
    command a check asks about, a pushed revision."""
    request[NOTE].update(fields)


def redeem(request: Request, ticket: Any, app: str) -> None:
    """Spend the push ticket of a deploy of a pushed revision; the console needs none."""
    caller = caller_of(request)
    if caller.key is None:
        return
    if ticket is not None and not isinstance(ticket, str):
        raise BadRequest(f'"ticket" must be a string, got {ticket!r}')
    lineage = {caller.pid, *ancestors(caller.pid)}
    request.app[ACCESS].tickets.redeem(ticket or "", caller.key, app, lineage)


def identify(request: Request, book: RuleBook) -> Caller:
    sock = request.transport.get_extra_info("socket") if request.transport else None
    if sock is None:
        raise Forbidden("cannot identify the peer")
    pid, uid = peer_credentials(sock)
    key = request.headers.get(KEY_HEADER) or None
    fingerprint = request.headers.get(FINGERPRINT_HEADER, "")
    caller = Caller(key if key is None or KEY_NAME.fullmatch(key) else None, fingerprint[:100],
                    pid, book.current())
    request[CALLER] = caller
    if uid not in allowed_uids():
        raise Forbidden(f"uid {uid} may not use this socket")
    if key is not None and caller.key is None:
        note(request, claimed=key[:80])
        raise BadRequest(f"{KEY_HEADER} {key[:80]!r} is not a key name")
    if started_by_pikud(pid):
        raise FromAppProcess(pid)
    return caller


def allowed_uids() -> tuple[int, ...]:
    """Root, the daemon's uid, and the deploy user's when pikud runs as root: never an
    app's own user."""
    owner = identity.current().deploy_owner()
    return (0, os.getuid(), *(owner[:1] if owner is not None else ()))


def target(request: Request, rule: Rule) -> str | None:
    if rule.scope is Scope.APP:
        return request.match_info.get("app")
    if rule.scope is Scope.QUERY:
        return request.query.get("app") or None
    return None


async def guard(request: Request, handler: Handler) -> Any:
    access = request.app[ACCESS]
    route = request.route
    method = "GET" if request.method == "HEAD" else request.method     # GET routes answer HEAD
    rule = BY_ROUTE.get((method, route or ""))
    request[NOTE] = {"command": rule.command if rule else f"{request.method} {request.path}",
                     "app": target(request, rule) if rule else None}
    try:
        caller = identify(request, access.book)
        if rule is None and route is not None:
            raise Forbidden(f"{method} {route} has no access rule (access/table.py)")  # closed
        if rule is not None and rule.scope is not Scope.ASKED:
            caller.check(rule, target(request, rule))
    except PikudError as exc:
        audit(access.audit, request, exc)
        raise
    if rule is None:
        return await handler(request)       # no such route: the handler answers 404 or 405
    try:
        response = await handler(request)
    except asyncio.CancelledError:      # the client left (control/http.py); a shielded
        if rule.method != "GET":        # action goes on without it, and is written down
            request[NOTE].setdefault("outcome", "client_left")
            audit(access.audit, request)
        raise
    except PikudError as exc:
        if rule.method != "GET" or isinstance(exc, Forbidden):
            audit(access.audit, request, exc)       # not a read of a mistyped app's name
        raise
    if rule.method != "GET":
        audit(access.audit, request)
    return response


def audit(log: AuditLog, request: Request, refused: PikudError | None = None) -> None:
    """One line for this request: its caller, its note, and its outcome (``refused``'s
    code and message, else what a stream noted, else "ok")."""
    caller = request.get(CALLER)
    noted: dict[str, Any] = request[NOTE]
    if refused is not None:
        noted.setdefault("outcome", refused.code)
        noted.setdefault("message", str(refused))
    log.write({"key": caller.key if caller else None,
               "fingerprint": caller.fingerprint if caller else "",
               "pid": caller.pid if caller else None, "outcome": "ok", **noted})
