"""The decision: may this caller run this command on this app? (pure)

``Caller.check(rule, app)`` raises what the caller is told: an app it has no
grant on does not exist for it (``AppNotFound``, as for an app that is not
there), a role too low is ``Forbidden`` naming the role it has and the one
needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from pikud.access.rules import EVERY_APP, Grants, Role
from pikud.access.table import Rule, Scope
from pikud.errors import AppNotFound, Forbidden


@dataclass(frozen=True)
class Caller:
    key: str | None             # None: the console (no forced command): admin
    fingerprint: str
    pid: int
    grants: Grants | None       # None: no rules file, every key is admin

    @property
    def shown(self) -> str:
        return repr(self.key) if self.key is not None else "the console"

    def role(self, app: str) -> Role | None:
        if self.key is None or self.grants is None:
            return Role.ADMIN
        return self.grants.role(self.key, app)

    def may(self, app: str, role: Role) -> bool:
        mine = self.role(app)
        return mine is not None and mine >= role

    def check(self, rule: Rule, app: str | None) -> None:
        """Raise unless the caller may run ``rule`` (on ``app``, for app and query scopes)."""
        if rule.scope is Scope.VISIBLE:
            if self.key is None or self.grants is None or any(
                    role >= rule.role for role in self.grants.by_key.get(self.key, {}).values()):
                return
            raise Forbidden(f"key {self.shown} has no {rule.role.label} grant on any app: "
                            f"{rule.command} needs one")
        target = app if app is not None and rule.scope is not Scope.SERVER else EVERY_APP
        mine = self.role(target)
        if mine is not None and mine >= rule.role:
            return
        if mine is None and target != EVERY_APP:
            raise AppNotFound(target)
        has = f"has {mine.label} on" if mine is not None else "has no grant on"
        where = "every app ('*')" if target == EVERY_APP else f"app {target!r}"
        raise Forbidden(f"key {self.shown} {has} {where}; {rule.command} needs "
                        f"{rule.role.label}")
