"""Fixtures of the integration tests: in-process slots and groups, a real nginx and its backends."""

from __future__ import annotations

import shutil
import tempfile
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
def base() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="pkn-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def server(base: Path) -> Iterator[NginxServer]:
    made = NginxServer(base)
    try:
        made.start()
        yield made
    finally:
        made.stop()
