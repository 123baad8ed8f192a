"""Who may do what: roles per key and app, kept in ``pikud/access.json`` (stdlib only).

A grant gives one key (by its name, as ``setup:ssh`` wrote it) one role on one
app, or on every app (``*``). Roles are ordered: ``read`` < ``deploy`` <
``admin``, and a key's role on an app is the higher of its grant on that app
and its grant on ``*``.

The file decides the mode. No file: the server is open, every key is admin
(piku's behaviour). A file, even one with no grant left: the rules apply, and
a key without a grant can do nothing. A call without a key (the piku user at
the console) is always admin.
"""

# Design notes:
# - Revoking the last grant does not open the server again: a lock that
#   silently falls off is worse than one that must be removed on purpose
#   (delete pikud/access.json by hand).
# - A corrupt file fails closed: it is set aside (statefile.py) and an empty
#   rules file takes its place, so no key can do anything until an admin at
#   the console grants again, also after a restart. Failing open would hand
#   every key admin because a disk or a hand broke a file.
# - The file is read again when its inode, size or mtime change (one stat per
#   request), so a hand edit applies without a restart.

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from pikud.appspec import validate_app_name
from pikud.atomic import write_atomic
from pikud.errors import AppNameError, BadRequest
from pikud.sshkeys import KEY_NAME
from pikud.statefile import json_object, load_json

log = logging.getLogger(__name__)
EVERY_APP = "*"
MAX_GRANTS = 10_000         # far above any real server; a bigger file is refused as corrupt


class Role(IntEnum):
    READ = 1
    DEPLOY = 2
    ADMIN = 3

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.upper()]
        except KeyError:
            raise BadRequest(f"role {text!r} is not one of read, deploy, admin") from None


def valid_key(name: str) -> str:
    if not KEY_NAME.fullmatch(name):
        raise BadRequest(f"key name {name!r} may only contain letters, digits and @._-")
    return name


def valid_target(app: str) -> str:
    """An app name, or ``*`` for every app."""
    return app if app == EVERY_APP else validate_app_name(app)


@dataclass(frozen=True)
class Grants:
    """Every grant: key -> app (or ``*``) -> role. An empty one locks every key out."""

    by_key: dict[str, dict[str, Role]] = field(default_factory=dict)

    def role(self, key: str, app: str) -> Role | None:
        """``key``'s role on ``app``: the higher of its grants on ``app`` and on ``*``."""
        mine = self.by_key.get(key, {})
        roles = [r for r in (mine.get(app), mine.get(EVERY_APP)) if r is not None]
        return max(roles) if roles else None

    def with_grant(self, key: str, app: str, role: Role) -> Grants:
        changed = {k: dict(v) for k, v in self.by_key.items()}
        changed.setdefault(key, {})[app] = role
        return Grants(changed)

    def without(self, key: str, app: str) -> Grants:
        changed = {k: dict(v) for k, v in self.by_key.items()}
        if changed.get(key, {}).pop(app, None) is None:
            raise BadRequest(f"key {key!r} has no grant on {app!r}")
        if not changed[key]:
            del changed[key]
        return Grants(changed)

    def rows(self) -> list[dict[str, str]]:
        return [{"key": key, "app": app, "role": role.label}
                for key, apps in sorted(self.by_key.items())
                for app, role in sorted(apps.items())]

    def to_json(self) -> str:
        data = {"grants": {key: {app: role.label for app, role in sorted(apps.items())}
                           for key, apps in sorted(self.by_key.items())}}
        return json.dumps(data, indent=2) + "\n"


def parse_grants(data: Any) -> Grants:
    """``{"grants": {KEY: {APP|*: ROLE}}}``; anything else is ValueError (statefile.py)."""
    grants = json_object(json_object(data)["grants"])
    if sum(len(json_object(apps)) for apps in grants.values()) > MAX_GRANTS:
        raise ValueError(f"more than {MAX_GRANTS} grants")
    by_key: dict[str, dict[str, Role]] = {}
    for key, apps in grants.items():
        if not KEY_NAME.fullmatch(key):
            raise ValueError(f"bad key name {key!r}")
        for app, role in json_object(apps).items():
            try:
                valid_target(app)
            except AppNameError as exc:
                raise ValueError(str(exc)) from None
            if not isinstance(role, str) or role.upper() not in Role.__members__:
                raise ValueError(f"bad role {role!r} for {key!r} on {app!r}")
            by_key.setdefault(key, {})[app] = Role[role.upper()]
    return Grants(by_key)


class RuleBook:
    """``pikud/access.json``, re-read when it changes on disk; ``current()`` is None while
    the server is open (no file)."""

    def __init__(self, path: Path, shown: str = "pikud/access.json") -> None:
        self.path, self.shown = path, shown
        self._seen: tuple[int, int, int] | None = None
        self._grants: Grants | None = None
        self.problem: str | None = None     # the last corrupt file, said by `piku access`

    def current(self) -> Grants | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._seen, self._grants = None, None
            return None
        signature = (st.st_ino, st.st_size, st.st_mtime_ns)
        if signature != self._seen:
            loaded = load_json(self.path, parse_grants, self.shown)
            if loaded.problem is not None:          # fail closed (Design notes)
                self.problem = loaded.problem
                log.error("access rules locked: %s; no key may do anything until an admin "
                          "grants again", loaded.problem)
                self._write(Grants())
            else:
                self._grants = loaded.data
                self._seen = signature
        return self._grants

    def grant(self, key: str, app: str, role: Role) -> Grants:
        grants = (self.current() or Grants()).with_grant(valid_key(key), valid_target(app), role)
        self._write(grants)
        return grants

    def revoke(self, key: str, app: str) -> Grants:
        grants = self.current()
        if grants is None:
            raise BadRequest("there are no access rules: every key is admin")
        grants = grants.without(valid_key(key), valid_target(app))
        self._write(grants)
        return grants

    def _write(self, grants: Grants) -> None:
        write_atomic(self.path, grants.to_json(), 0o600)
        st = os.stat(self.path)
        self._seen, self._grants = (st.st_ino, st.st_size, st.st_mtime_ns), grants
