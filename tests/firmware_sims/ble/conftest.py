"""Every simulator test starts with nothing on the simulated radio."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from firmware_sims.ble.air import AIR, SCENARIO_ENV, Air


@pytest.fixture(autouse=True)
def empty_air(monkeypatch: pytest.MonkeyPatch) -> Iterator[Air]:
    """Each test starts with nothing on the simulated radio and no scenario file."""
    monkeypatch.delenv(SCENARIO_ENV, raising=False)
    AIR.clear()
    yield AIR
    AIR.clear()
