"""What an App is given by its owner, instead of the owner itself.

One ``AppServices`` is shared by every app of a daemon (the registry holds
it), so new ``defaults`` and ``ceilings`` read from pikud.toml at SIGHUP reach
them all. An App built in a test gets one of its own: no daemon, no registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from pikud.appsettings import AppSettings
from pikud.appspec import AppSpec
from pikud.ceilings import Ceilings
from pikud.cron import Cron
from pikud.events import EventLog
from pikud.paths import Paths
from pikud.procman.keeper import Keeper
from pikud.traffic import Traffic


def _nothing(*args: object) -> None:
    """The default of a hook its owner does not need."""


def _none_claimed(besides: str) -> int:
    return 0


def _no_problems() -> list[str]:
    return []


@dataclass
class AppServices:
    paths: Paths
    base_env: Mapping[str, str]             # the daemon's environment, under every app's
    defaults: AppSettings                   # pikud.toml [defaults]
    events: EventLog
    traffic: Traffic
    cron: Cron
    ceilings: Ceilings = field(default_factory=Ceilings)
    save: Callable[[], None] = _nothing                     # persist every desired state
    claimed: Callable[[str], int] = _none_claimed           # processes of every other app
    problems: Callable[[], list[str]] = _no_problems        # daemon-wide ones, for `ps`
    forget: Callable[[str], None] = _nothing                # the app was destroyed
    watch: Callable[[str, AppSpec], None] = _nothing        # watch its ENV, SCALING, touch files
    unwatch: Callable[[str], None] = _nothing
    keeper: Keeper = field(default_factory=Keeper)          # systemd's store, the record
