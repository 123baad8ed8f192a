"""Fixtures of the integration tests: in-process slots and groups, a real nginx and its backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.inprocess import Harness
from tests.integration.nginx_server import Backend, NginxServer


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """Slots and groups under ``tmp_path``; all stopped at the end, none left running."""
    made = Harness(tmp_path)
    try:
        yield made
    finally:
        await made.close()


@pytest.fixture
def backend() -> Iterator[Callable[..., Backend]]:
    started: list[Backend] = []

    def start(name: str, unix: Path | None = None) -> Backend:
        started.append(Backend(name, unix))
        return started[-1]

    yield start
    for made in started:
        made.server.close()


@pytest.fixture
def server(open_dir: Path) -> Iterator[NginxServer]:
    made = NginxServer(open_dir)
    try:
        made.start()
        yield made
    finally:
        made.stop()
