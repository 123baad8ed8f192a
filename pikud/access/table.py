"""Every command and the role it needs, in one table (stdlib only).

Each control route appears once, with the `piku` commands that call it; the
commands that never reach a route (``run``, ``scp``, ``sftp``, ``setup``,
``setup:ssh``, ``git-upload-pack``) are asked for through ``POST
/access/check`` before the CLI execs anything. tests/integration/test_access.py
drives this table over a real daemon for every role.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pikud.access.rules import Role


class Scope(Enum):
    APP = "app"             # the role on the app named in the path (or the body's, for checks)
    SERVER = "server"       # the role on every app: a grant on `*`
    QUERY = "query"         # the role on ``?app=APP`` when given, else on `*`
    VISIBLE = "visible"     # the role on at least one app; the answer shows only those
    ASKED = "asked"         # the rule of the command named in the body (POST /access/check)


@dataclass(frozen=True)
class Rule:
    command: str                    # its name in errors and the audit log
    role: Role
    scope: Scope
    method: str | None = None       # the control route; None: a CLI-only command
    route: str | None = None
    cli: tuple[str, ...] | None = None  # the `piku` commands it serves (None: ``command``)

    @property
    def commands(self) -> tuple[str, ...]:
        return (self.command,) if self.cli is None else self.cli


READ, DEPLOY, ADMIN = Role.READ, Role.DEPLOY, Role.ADMIN
APP, SERVER, QUERY, VISIBLE = Scope.APP, Scope.SERVER, Scope.QUERY, Scope.VISIBLE

RULES = (
    Rule("status", READ, SERVER, "GET", "/status"),
    Rule("apps", READ, VISIBLE, "GET", "/apps"),
    Rule("ps", READ, APP, "GET", "/apps/{app}"),
    Rule("releases", READ, APP, "GET", "/apps/{app}/releases"),
    Rule("cron", READ, APP, "GET", "/apps/{app}/cron"),
    Rule("config", READ, APP, "GET", "/apps/{app}/config", ("config", "config:get")),
    Rule("config:live", READ, APP, "GET", "/apps/{app}/config/live"),
    Rule("logs", READ, APP, "GET", "/apps/{app}/logs"),
    Rule("events", READ, QUERY, "GET", "/events", ()),
    Rule("git-upload-pack", READ, APP),
    Rule("start", DEPLOY, APP, "POST", "/apps/{app}/start"),
    Rule("stop", DEPLOY, APP, "POST", "/apps/{app}/stop"),
    Rule("restart", DEPLOY, APP, "POST", "/apps/{app}/restart"),
    Rule("deploy", DEPLOY, APP, "POST", "/apps/{app}/deploy", ("deploy", "git-hook")),
    Rule("git-receive-pack", DEPLOY, APP, "POST", "/apps/{app}/push"),
    Rule("ps:scale", DEPLOY, APP, "POST", "/apps/{app}/scale"),
    Rule("rollback", DEPLOY, APP, "POST", "/apps/{app}/rollback"),
    Rule("cron:run", DEPLOY, APP, "POST", "/apps/{app}/cron/{kind}/run"),
    Rule("config:set", DEPLOY, APP, "POST", "/apps/{app}/config", ("config:set", "config:unset")),
    Rule("destroy", ADMIN, APP, "DELETE", "/apps/{app}"),
    Rule("run", ADMIN, APP),
    Rule("access", ADMIN, VISIBLE, "GET", "/access"),
    Rule("access:grant", ADMIN, APP, "PUT", "/access/{key}/{app}"),
    Rule("access:revoke", ADMIN, APP, "DELETE", "/access/{key}/{app}"),
    Rule("audit", ADMIN, QUERY, "GET", "/audit"),
    Rule("access:check", READ, Scope.ASKED, "POST", "/access/check", ()),
    Rule("cloudflare:refresh", ADMIN, SERVER, "POST", "/cloudflare/refresh"),
    Rule("setup", ADMIN, SERVER),
    Rule("setup:ssh", ADMIN, SERVER),
    Rule("scp", ADMIN, SERVER),
    Rule("sftp", ADMIN, SERVER),
)
UNGUARDED = frozenset({"help", "update"})
"""`piku` commands that reach nothing: no rule, no check."""

BY_ROUTE = {(rule.method, rule.route): rule for rule in RULES
            if rule.method is not None and rule.route is not None}
CLI_ONLY = {rule.command: rule for rule in RULES if rule.route is None}
