"""Fixtures of the integration tests that drive pikud's parts in-process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.inprocess import Harness


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    """Slots and groups under ``tmp_path``; all stopped at the end, none left running."""
    made = Harness(tmp_path)
    try:
        yield made
    finally:
        await made.close()
