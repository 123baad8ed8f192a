"""Fixtures of the integration tests: in-process slots and groups, a real nginx and its backends."""

from __future__ import annotations

import shutil
import subprocess
import sys
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
def server(open_dir: Path) -> Iterator[NginxServer]:
    made = NginxServer(open_dir)
    try:
        made.start()
        yield made
    finally:
        made.stop()


@pytest.fixture(scope="session")
def app_servers() -> Iterator[Path]:
    """A virtualenv's bin/ with granian, gunicorn and uvicorn, as a build adds them (uv,
    from its cache when the e2e pushes ran first, else from PyPI); removed at the end."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv is not None, "uv is a test dependency: pip install -e '.[test]'"
    base = Path(tempfile.mkdtemp(prefix="pks-", dir="/tmp"))
    bin_dir = base / "venv" / "bin"
    try:
        subprocess.run([uv, "venv", "-q", str(base / "venv")], check=True, timeout=120)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(bin_dir / "python"),
                        "granian", "gunicorn", "uvicorn"], check=True, timeout=300)
        yield bin_dir
    finally:
        shutil.rmtree(base, ignore_errors=True)
