from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.gateway.process_harness import LoggedProcess


@pytest.fixture
def processes() -> Iterator[list[LoggedProcess]]:
    """Processes a fault test starts (gateways, ingest): killed at the end, newest first."""
    started: list[LoggedProcess] = []
    yield started
    for process in reversed(started):
        process.kill()
