"""The control routes about access: the rules, the audit log, checks for the CLI-only
commands and push tickets (control/protocol.py lists them; the guard has checked the
caller's role before any of these runs)."""

from __future__ import annotations

from typing import Any

from pikud.access.rules import EVERY_APP, Role
from pikud.access.table import CLI_ONLY
from pikud.appspec import validate_app_name
from pikud.control.guard import ACCESS, Access, caller_of, note
from pikud.control.handlers import body, int_query
from pikud.control.request import Request, Route
from pikud.errors import BadRequest


def access_of(request: Request) -> Access:
    return request.app[ACCESS]


async def rules(request: Request) -> Any:
    """GET /access -> {"mode": "open"|"rules", "grants": [{"key", "app", "role"}],
    "problem": str|null}: the grants on the apps the caller is admin of (all for `*`)."""
    access, caller = access_of(request), caller_of(request)
    grants = access.book.current()
    rows = [] if grants is None else [
        row for row in grants.rows() if caller.may(EVERY_APP, Role.ADMIN)
        or (row["app"] != EVERY_APP and caller.may(row["app"], Role.ADMIN))]
    return {"mode": "open" if grants is None else "rules", "grants": rows,
            "problem": access.book.problem}


async def grant(request: Request) -> Any:
    """PUT /access/KEY/APP {"role": "read"|"deploy"|"admin"} -> GET /access's answer.
    APP may be `*` (every app); the first grant ends the open mode."""
    role = (await body(request)).get("role")
    if not isinstance(role, str):
        raise BadRequest('expected {"role": "read"|"deploy"|"admin"}')
    access_of(request).book.grant(request.match_info["key"], request.match_info["app"],
                                  Role.parse(role))
    note(request, grantee=request.match_info["key"], role=role)
    return await rules(request)


async def revoke(request: Request) -> Any:
    """DELETE /access/KEY/APP -> GET /access's answer."""
    access_of(request).book.revoke(request.match_info["key"], request.match_info["app"])
    note(request, grantee=request.match_info["key"])
    return await rules(request)


async def check(request: Request) -> Any:
    """POST /access/check {"command", "app"} -> {"command", "app"}: may the caller run a
    command that reaches no route (run, scp, sftp, setup, setup:ssh, git-upload-pack)?
    The CLI asks before it execs; refused as any route is."""
    data = await body(request)
    command, app = data.get("command"), data.get("app")
    rule = CLI_ONLY.get(command) if isinstance(command, str) else None
    if rule is None:
        raise BadRequest(f'"command" must be one of {", ".join(sorted(CLI_ONLY))}, '
                         f"got {command!r}")
    if app is not None and not isinstance(app, str):
        raise BadRequest(f'"app" must be an app name, got {app!r}')
    note(request, command=rule.command, app=app)
    if app is not None:
        validate_app_name(app)
    caller_of(request).check(rule, app)
    return {"command": rule.command, "app": app}


async def audit(request: Request) -> Any:
    """GET /audit?lines=N[&app=APP] -> {"lines": [entry, ...]} oldest first."""
    app = request.query.get("app") or None
    return {"lines": access_of(request).audit.last(int_query(request, "lines", 50), app)}


async def push_ticket(request: Request) -> Any:
    """POST /apps/APP/push -> {"ticket"}: for the pre-receive hook of the git receive-pack
    that asks (its pid); good once, for this key and app (access/tickets.py)."""
    app = validate_app_name(request.match_info["app"])
    caller = caller_of(request)
    return {"ticket": access_of(request).tickets.issue(caller.key, app, caller.pid)}


ROUTES = [
    Route("GET", "/access", rules),
    Route("PUT", "/access/{key}/{app}", grant),
    Route("DELETE", "/access/{key}/{app}", revoke),
    Route("POST", "/access/check", check),
    Route("GET", "/audit", audit),
    Route("POST", "/apps/{app}/push", push_ticket),
]
