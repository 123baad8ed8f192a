"""Access per key against a real daemon: every rule of access/table.py for every role,
what a key without a grant sees, the CLI's key header, a cron job refused at the socket,
and the audit log's lines."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pikud.access.rules import Role
from pikud.access.table import CLI_ONLY, RULES, Rule, Scope
from pikud.control.client import Client, RemoteError
from pikud.control.protocol import FINGERPRINT_HEADER, KEY_HEADER
from tests.conftest import FAST, Pikud, json_out
from tests.e2e.apps import git, local_remote
from tests.waiting import wait_for

R, D, A = Role.READ, Role.DEPLOY, Role.ADMIN
# Each key's grants; "nobody" has none. None: the console (no key header).
KEYS: dict[str | None, dict[str, Role]] = {
    None: {}, "nobody": {}, "r": {"a": R}, "d": {"a": D}, "ad": {"a": A},
    "R": {"*": R}, "D": {"*": D}, "A": {"*": A},
}
CRON_ONLY = "cron1: 0 0 1 1 * true\n"         # an app with nothing to start: quick to act on
# Bodies that fail once past the guard, so an allowed request changes nothing.
BODIES = {"deploy": {"bogus": 1}, "ps:scale": {}, "config:set": {}, "rollback": {"release": 0},
          "access:grant": {"role": "read"}}


def as_key(daemon: Pikud, key: str | None) -> Client:
    headers = {} if key is None else {KEY_HEADER: key, FINGERPRINT_HEADER: f"SHA256:{key}"}
    return Client(daemon.root / "pikud.sock", timeout=30, caller=headers)


def role_of(key: str | None, app: str) -> Role | None:
    if key is None:
        return A
    grants = KEYS[key]
    roles = [r for r in (grants.get(app), grants.get("*")) if r is not None]
    return max(roles) if roles else None


def expected(key: str | None, rule: Rule, app: str | None) -> str | None:
    """The refusal code the key must get, or None when it may."""
    if rule.scope is Scope.VISIBLE:
        mine = [A] if key is None else list(KEYS[key].values())
        return None if any(role >= rule.role for role in mine) else "forbidden"
    target = "*" if rule.scope is Scope.SERVER or app is None else app
    mine = role_of(key, target)
    if mine is not None and mine >= rule.role:
        return None
    return "app_not_found" if mine is None and target != "*" else "forbidden"


def requests(rule: Rule) -> list[tuple[str, str, Any, Rule, str | None]]:
    """(method, path, body, the rule it is judged by, app) for one rule."""
    if rule.scope is Scope.ASKED:
        return [("POST", "/access/check", {"command": asked.command, "app": "a"}, asked,
                 "a" if asked.scope is Scope.APP else None) for asked in CLI_ONLY.values()]
    if rule.route is None:
        return []           # asked through /access/check
    assert rule.method is not None
    path = rule.route.format(app="a", kind="nope", key="zed")
    if rule.scope is Scope.QUERY:
        return [(rule.method, path, None, rule, None),
                (rule.method, f"{path}?app=a", None, rule, "a")]
    return [(rule.method, path, BODIES.get(rule.command), rule,
             "a" if rule.scope is Scope.APP else None)]


def outcome(client: Client, method: str, path: str, body: Any) -> str | None:
    try:
        client.request(method, path, body)
    except RemoteError as exc:
        return exc.code
    return None


@pytest.fixture
def locked(pikud_factory: Callable[..., Pikud], short_root: Path) -> Pikud:
    """A daemon with apps a and b and the grants of KEYS, made from the console."""
    (short_root / "pikud.toml").write_text('cloudflare_urls = ["http://127.0.0.1:9/v4"]\n')
    daemon = pikud_factory()
    for app in ("a", "b"):
        daemon.add_app(app, CRON_ONLY, FAST)
    for key, grants in KEYS.items():
        for app, role in grants.items():
            daemon.api("PUT", f"/access/{key}/{app}", {"role": role.label})
    return daemon


def test_every_rule_for_every_role(locked: Pikud) -> None:
    refused = {"forbidden", "app_not_found"}
    checked = 0
    for rule in RULES:
        for method, path, body, judged, app in requests(rule):
            for key in KEYS:
                want = expected(key, judged, app)
                got = outcome(as_key(locked, key), method, path, body)
                shown = f"{key!r} {method} {path} {body}"
                if want is None:
                    assert got not in refused, f"{shown}: refused ({got})"
                else:
                    assert got == want, f"{shown}: {got}, expected {want}"
                if got is None and judged.command == "destroy":
                    locked.add_app("a", CRON_ONLY, FAST)
                checked += 1
    assert checked > 8 * len(RULES)


def test_a_key_sees_only_its_apps_and_every_refusal_is_audited(locked: Pikud) -> None:
    reader = as_key(locked, "r")
    assert [app["name"] for app in reader.request("GET", "/apps")["apps"]] == ["a"]
    assert {app["name"] for app in locked.api("GET", "/apps")["apps"]} == {"a", "b"}
    with pytest.raises(RemoteError, match="app 'b' not found"):
        reader.request("GET", "/apps/b/config/live")
    # The CLI sends the forced command's NAME and FINGERPRINT; the daemon decides.
    env = dict(locked.env, NAME="r", FINGERPRINT="SHA256:abc")
    cli = [sys.executable, "-m", "pikud.cli"]
    stop = subprocess.run([*cli, "stop", "a"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert stop.returncode == 1
    assert "Error: key 'r' has read on app 'a'; stop needs deploy" in stop.stderr
    run = subprocess.run([*cli, "run", "a", "echo", "ran"], env=env, capture_output=True,
                         text=True, timeout=30)
    assert "run needs admin" in run.stderr and "ran" not in run.stdout
    assert subprocess.run([*cli, "run", "a", "echo", "ran"], env=dict(env, NAME="ad"),
                          capture_output=True, text=True, timeout=30).stdout == "ran\n"
    locked.cli("restart", "a", check=True)                      # the console: admin
    with pytest.raises(RemoteError, match="no push ticket"):   # a key pushes through git only
        as_key(locked, "d").request("POST", "/apps/a/deploy", {"revision": "a" * 40})
    with pytest.raises(RemoteError, match="'bad name' is not a key name"):
        as_key(locked, "bad name").request("GET", "/apps")

    lines = json_out(locked.cli("audit", "a", "--json"))["lines"]
    by_command = {line["command"]: line for line in lines}
    assert by_command["stop"] == {**by_command["stop"], "key": "r",
                                  "fingerprint": "SHA256:abc", "app": "a",
                                  "outcome": "forbidden"}
    assert [(e["key"], e["outcome"]) for e in lines if e["command"] == "run"] == [
        ("r", "forbidden"), ("ad", "ok")]
    assert by_command["restart"]["key"] is None and by_command["restart"]["outcome"] == "ok"
    assert any(e["command"] == "config:live" and e["app"] == "b" and e["outcome"] ==
               "app_not_found" for e in locked.api("GET", "/audit?app=b&lines=10")["lines"])
    audit_file = locked.root / "audit.log"
    assert stat.S_IMODE(audit_file.stat().st_mode) == 0o600
    assert all(json.loads(line)["time"] for line in audit_file.read_text().splitlines())
    with pytest.raises(RemoteError, match="audit needs admin"):
        as_key(locked, "d").request("GET", "/audit?app=a")
    assert "KEY" in locked.cli("access", check=True).stdout


def test_an_app_process_cannot_drive_pikud(pikud: Pikud) -> None:
    """A cron job (what any app process could do: same uid) asks pikud to stop another
    app, as the console would: refused by its pid, and audited."""
    pikud.add_app("victim", "worker: sleep 300\n", FAST)
    pikud.api("POST", "/apps/victim/start")
    pikud.add_app("job", f"cron1: 0 0 1 1 * {sys.executable} -m pikud.cli stop victim\n", FAST)
    pikud.api("POST", "/apps/job/start")
    pikud.api("POST", "/apps/job/cron/cron1/run")
    wait_for(lambda: "may not use pikud.sock" in pikud.log_text("job", "cron1"), 15,
             "the cron job's refusal")
    assert pikud.process("victim", "victim:worker.1")["state"] == "RUNNING"
    entries = pikud.api("GET", "/audit?app=victim")["lines"]
    assert [(e["command"], e["outcome"], e["key"]) for e in entries] == [
        ("start", "ok", None), ("stop", "app_process", None)]


def test_new_nginx_include_text_needs_admin_on_the_app(locked: Pikud, tmp_path: Path) -> None:
    """NGINX_INCLUDE_FILE is config nginx's master reads as root: a deploy key cannot put
    new text live by push, config:set or rollback (nothing changes); an admin key can,
    and a deploy key then pushes and configures with the text accepted."""
    work = tmp_path / "work"
    work.mkdir()
    git(work, "init", "--quiet", "--initial-branch=main")
    (work / "Procfile").write_text("worker: sleep 300\n")
    (work / "ENV").write_text(FAST + "NGINX_SERVER_NAME=a.example.com\n"
                              "NGINX_INCLUDE_FILE=extra.conf\n")
    (work / "extra.conf").write_text("add_header X-Extra one;\n")
    (work / "other.conf").write_text("access_log /tmp/pikud-never.log;\n")
    local_remote(work, "a")

    def push(key: str, message: str) -> subprocess.CompletedProcess[str]:
        git(work, "add", "-A")
        git(work, "-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit",
            "--quiet", "--allow-empty", "-m", message)
        return git(work, "push", "piku", "main", check=False,
                   env=dict(locked.env, NAME=key, FINGERPRINT=f"SHA256:{key}"))

    def releases() -> list[int]:
        return [r["number"] for r in locked.api("GET", "/apps/a/releases")["releases"]]

    refusal = ("NGINX_INCLUDE_FILE (extra.conf) would put new nginx config live, which "
               "nginx's master reads as root: that needs the admin role on app 'a'")
    refused = push("d", "v1")
    assert refused.returncode != 0 and refusal in refused.stderr, refused.stderr
    assert releases() == [] and not (locked.root / "releases/a/1").exists()
    assert push("ad", "v1 again").returncode == 0
    assert releases() == [1]

    deployer = as_key(locked, "d")
    deployer.request("POST", "/apps/a/config", {"set": {"COLOR": "blue"}})   # as accepted
    env_file = locked.root / "envs/a/ENV"
    before = env_file.read_text()
    for change in ({"set": {"NGINX_INCLUDE_FILE": "other.conf"}},
                   {"unset": ["COLOR"], "set": {"NGINX_INCLUDE_FILE": "other.conf"}}):
        with pytest.raises(RemoteError, match="NGINX_INCLUDE_FILE \\(other.conf\\) would put"):
            deployer.request("POST", "/apps/a/config", change)
    assert env_file.read_text() == before

    (work / "extra.conf").write_text("add_header X-Extra two;\n")
    refused = push("d", "v2")
    assert refused.returncode != 0 and refusal in refused.stderr, refused.stderr
    assert push("ad", "v2 again").returncode == 0
    assert releases() == [2, 1]
    with pytest.raises(RemoteError, match="NGINX_INCLUDE_FILE \\(extra.conf\\) would put"):
        deployer.request("POST", "/apps/a/rollback", {"release": 1})
    assert locked.api("GET", "/apps/a")["release"] == 2
    as_key(locked, "ad").request("POST", "/apps/a/rollback", {"release": 1})
    (work / "extra.conf").write_text("add_header X-Extra one;\n")
    assert push("d", "v3: the include of the live release").returncode == 0
    assert [(e["command"], e["key"], e["outcome"])
            for e in locked.api("GET", "/audit?app=a&lines=100")["lines"]
            if e["key"] == "d" and e["outcome"] == "forbidden"] == [
        ("deploy", "d", "forbidden"), ("config:set", "d", "forbidden"),
        ("config:set", "d", "forbidden"), ("deploy", "d", "forbidden"),
        ("rollback", "d", "forbidden")]
