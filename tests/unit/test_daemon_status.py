"""The daemon's /status data, before its parts are all up."""

from __future__ import annotations

from pathlib import Path

from pikud.daemon import Daemon
from pikud.paths import Paths
from pikud.settings import load_settings


def test_status_before_the_router_serves_says_no_http(tmp_path: Path) -> None:
    """The control socket answers from the start of the boot, before the router binds."""
    daemon = Daemon(Paths(tmp_path), load_settings(tmp_path / "pikud.toml"), "asyncio",
                    http=("127.0.0.1", 0))
    status = daemon.status()
    assert status["http"] is None and status["apps"] == 0
