"""What the BLE driver and discovery tests share: an empty simulated radio and a recording sink."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from firmware_sims.ble.air import AIR, SCENARIO_ENV
from gateway.codecs.common import Measurement
from gateway.contract import Reading
from gateway.drivers.base import ClockCheck, DeviceInfo, DeviceRecord, UnreadableRecord
from gateway.readings.normalise import to_reading


@pytest.fixture(autouse=True)
def empty_air(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with nothing on the simulated radio and no scenario file."""
    monkeypatch.delenv(SCENARIO_ENV, raising=False)
    AIR.clear()
    yield
    AIR.clear()


class RecordingSink:
    """The outbox's contract: returns once the reading is durable (here: once it is in the list).
    Frames the codec could not decode arrive as UnreadableRecord and are kept in ``unreadable``."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.measurements: list[Measurement] = []
        self.clocks: list[ClockCheck | None] = []
        self.unreadable: list[UnreadableRecord] = []

    async def __call__(self, device: DeviceInfo, measurement: DeviceRecord, clock: ClockCheck | None) -> None:
        if isinstance(measurement, UnreadableRecord):
            self.unreadable.append(measurement)
            return
        self.measurements.append(measurement)
        self.clocks.append(clock)
        self.readings.append(to_reading(device, measurement, clock, datetime.now(UTC)))
