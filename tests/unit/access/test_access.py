"""Access rules, the decision, push tickets and the audit log: pure parts and real files."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pikud.access.audit import AuditLog
from pikud.access.gate import Caller
from pikud.access.peer import ancestors, started_by_pikud
from pikud.access.rules import Grants, Role, RuleBook
from pikud.access.table import BY_ROUTE, CLI_ONLY, RULES, UNGUARDED, Scope
from pikud.access.tickets import PushTickets
from pikud.cli import piku
from pikud.control.server import route_table
from pikud.errors import AppNotFound, BadRequest, Forbidden, PushRefused

R, D, A = Role.READ, Role.DEPLOY, Role.ADMIN
GRANTS = Grants({"ro": {"a": R}, "dev": {"a": D, "*": R}, "boss": {"*": A}})


def caller(key: str | None, grants: Grants | None = GRANTS) -> Caller:
    return Caller(key, "", 1, grants)


def test_every_route_and_every_command_has_its_rule() -> None:
    table = route_table(None, dict, None)       # type: ignore[arg-type]  (routes only)
    assert {(route.method, route.pattern) for route in table.routes()} == set(BY_ROUTE)
    served = {command for rule in RULES for command in rule.commands}
    assert set(piku.commands) == served | UNGUARDED
    assert not served & UNGUARDED
    assert all(rule.scope in (Scope.APP, Scope.SERVER) for rule in CLI_ONLY.values())


@pytest.mark.parametrize(("key", "app", "role"), [
    ("ro", "a", R), ("ro", "b", None), ("ro", "*", None),
    ("dev", "a", D), ("dev", "b", R), ("dev", "*", R),
    ("boss", "a", A), ("boss", "*", A), ("nobody", "a", None),
])
def test_a_role_is_the_higher_of_the_app_and_star_grants(key: str, app: str,
                                                          role: Role | None) -> None:
    assert GRANTS.role(key, app) is role


def rule(command: str):  # type: ignore[no-untyped-def]
    return next(r for r in RULES if r.command == command)


def test_the_decision() -> None:
    for who in (caller(None), caller("anyone", None)):      # the console; no rules file
        who.check(rule("destroy"), "a")
        who.check(rule("cloudflare:refresh"), None)
    caller("ro").check(rule("logs"), "a")
    with pytest.raises(Forbidden, match="key 'ro' has read on app 'a'; restart needs deploy"):
        caller("ro").check(rule("restart"), "a")
    with pytest.raises(AppNotFound, match="app 'b' not found"):     # no grant: no app
        caller("ro").check(rule("ps"), "b")
    with pytest.raises(Forbidden, match=r"has no grant on every app \('\*'\); status needs"):
        caller("ro").check(rule("status"), None)
    caller("dev").check(rule("status"), None)
    caller("dev").check(rule("events"), "a")
    with pytest.raises(Forbidden, match="has read on app 'b'; rollback needs deploy"):
        caller("dev").check(rule("rollback"), "b")
    with pytest.raises(Forbidden, match="no read grant on any app: apps needs one"):
        caller("nobody").check(rule("apps"), None)
    with pytest.raises(Forbidden, match="no admin grant on any app"):
        caller("dev").check(rule("access"), None)
    caller("boss").check(rule("run"), "zzz")
    with pytest.raises(Forbidden, match=r"has no grant on every app \('\*'\)"):
        caller("nobody", Grants()).check(rule("access:grant"), "*")     # locked: nobody


def test_the_rules_file(tmp_path: Path) -> None:
    book = RuleBook(tmp_path / "access.json")
    assert book.current() is None                            # no file: open
    book.grant("alice", "*", A)
    assert stat.S_IMODE((tmp_path / "access.json").stat().st_mode) == 0o600
    book.grant("bob", "web", D)
    assert book.current() == Grants({"alice": {"*": A}, "bob": {"web": D}})
    book.revoke("alice", "*")
    book.revoke("bob", "web")
    assert book.current() == Grants()                        # still locked: no grant left
    with pytest.raises(BadRequest, match="no grant on 'web'"):
        book.revoke("bob", "web")
    with pytest.raises(BadRequest, match="key name 'a b'"):
        book.grant("a b", "web", R)
    # A hand edit applies without a restart; a corrupt file fails closed, also later.
    (tmp_path / "access.json").write_text(json.dumps({"grants": {"carol": {"x": "read"}}}))
    assert book.current() == Grants({"carol": {"x": R}})
    (tmp_path / "access.json").write_text('{"grants": {"carol": {"x": "owner"}}}')
    assert book.current() == Grants()
    assert "pikud/access.json was corrupt" in (book.problem or "")
    assert [p.name for p in tmp_path.glob("access.json.corrupt-*")]
    assert RuleBook(tmp_path / "access.json").current() == Grants()


def test_push_tickets() -> None:
    now = [0.0]
    tickets = PushTickets(ttl=10, clock=lambda: now[0])
    token = tickets.issue("dev", "a", pid=100)
    with pytest.raises(PushRefused, match="no push ticket"):
        tickets.redeem("", "dev", "a", {100})
    other = tickets.issue("dev", "a", pid=100)
    with pytest.raises(PushRefused, match="for app 'a' and key 'dev', not 'b'"):
        tickets.redeem(other, "dev", "b", {100})
    with pytest.raises(PushRefused, match="another git receive-pack"):
        tickets.redeem(tickets.issue("dev", "a", pid=100), "dev", "a", {1, 7})
    tickets.redeem(token, "dev", "a", {5, 100})
    with pytest.raises(PushRefused, match="unknown or used already"):
        tickets.redeem(token, "dev", "a", {5, 100})
    late = tickets.issue("dev", "a", pid=100)
    now[0] = 11
    with pytest.raises(PushRefused, match="expired"):
        tickets.redeem(late, "dev", "a", {100})


def test_the_audit_log_rotates_and_stays_private(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log", max_bytes=1024, backups=2)
    for n in range(40):
        audit.write({"key": "k", "command": "restart", "app": f"app{n % 2}", "outcome": "ok"})
    assert stat.S_IMODE((tmp_path / "audit.log").stat().st_mode) == 0o600
    assert (tmp_path / "audit.log.1").exists() and not (tmp_path / "audit.log.3").exists()
    last = audit.last(3, "app0")
    assert [e["app"] for e in last] == ["app0"] * 3 and last[-1]["time"]
    with open(tmp_path / "audit.log", "a") as f:
        f.write("not json\n")
    assert len(audit.last(5)) == 5


def test_a_process_pikud_started_is_told_apart_by_its_ancestry() -> None:
    """Here the test process stands for pikud: its grandchild is "started by" it."""
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; "
                              "subprocess.run(['sleep', '30'])"])
    try:
        grandchild = None
        for _ in range(200):
            with open(f"/proc/{child.pid}/task/{child.pid}/children") as f:
                found = f.read().split()
            if found:
                grandchild = int(found[0])
                break
            subprocess.run(["sleep", "0.05"])
        assert grandchild is not None
        assert child.pid in ancestors(grandchild)
        assert started_by_pikud(grandchild, daemon=os.getpid())
        assert not started_by_pikud(os.getpid())
        assert not started_by_pikud(os.getpid(), daemon=child.pid)
    finally:
        child.kill()
        child.wait()
