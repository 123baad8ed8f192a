"""One-time push tickets: the only way a pushed revision gets deployed.

``piku git-receive-pack APP`` asks for a ticket before it execs git, and git
hands it to the pre-receive hook (``piku git-hook APP``) in the environment.
A ticket is good once, for one key and one app, for TTL seconds, and only
from a descendant of the process that asked for it (the receive-pack, which
keeps its pid across the exec): a hand-run ``git-hook`` cannot replay a push
to switch revisions, even with a ticket it read somewhere.
"""

from __future__ import annotations

import base64
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pikud.errors import PushRefused

TTL = 900.0             # seconds from the start of a push to its hook: a slow upload fits
MAX_LIVE = 1000         # tickets kept at most; the oldest go first


@dataclass(frozen=True)
class Ticket:
    key: str | None
    app: str
    pid: int            # the receive-pack that asked
    expires: float


class PushTickets:
    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.clock = ttl, clock
        self._live: OrderedDict[str, Ticket] = OrderedDict()

    def issue(self, key: str | None, app: str, pid: int) -> str:
        now = self.clock()
        for token in [t for t, ticket in self._live.items() if ticket.expires <= now]:
            del self._live[token]
        while len(self._live) >= MAX_LIVE:
            self._live.popitem(last=False)
        # 32 characters from os.urandom, as secrets.token_urlsafe makes them (secrets
        # would bring hmac and hashlib, about 600 KiB of the daemon's RSS).
        token = base64.urlsafe_b64encode(os.urandom(24)).decode()
        self._live[token] = Ticket(key, app, pid, now + self.ttl)
        return token

    def redeem(self, token: str, key: str | None, app: str, lineage: Iterable[int]) -> None:
        """Use up ``token`` for a deploy of ``app`` by ``key`` from a process whose
        ancestors are ``lineage``; PushRefused says why it is not good."""
        if not token:
            raise PushRefused(f"a pushed revision of {app!r} is deployed only from the hook of "
                              "a git push (no push ticket: git-hook is not run by hand)")
        ticket = self._live.pop(token, None)
        if ticket is None:
            raise PushRefused("the push ticket is unknown or used already (a ticket is good "
                              "for one push; pikud restarted since?)")
        if ticket.expires <= self.clock():
            raise PushRefused(f"the push ticket expired ({self.ttl:g}s after the push began)")
        if ticket.app != app or ticket.key != key:
            raise PushRefused(f"the push ticket is for app {ticket.app!r} and key "
                              f"{ticket.key or '(console)'!r}, not {app!r} and "
                              f"{key or '(console)'!r}")
        if ticket.pid not in lineage:
            raise PushRefused("the push ticket belongs to another git receive-pack: the hook "
                              "must run under the receive-pack that asked for it")
