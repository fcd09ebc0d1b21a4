"""Live heart rate at 4 Hz becomes one reading per cadence carrying the window's median."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from gateway.codecs.common import Measurement, Quantity
from gateway.drivers.base import DeviceInfo
from gateway.drivers.heart_rate_window import HeartRateWindow
from gateway.readings.normalise import to_reading

pytestmark = pytest.mark.unit

T0 = datetime(2026, 3, 14, 7, 0, 0, tzinfo=UTC)


def hr(
    bpm: float, *, rr: tuple[float, ...] = (), energy: float | None = None, flags: tuple[str, ...] = ()
) -> Measurement:
    values = {"heart_rate": Quantity(bpm, "/min")}
    if rr:
        values["rr_intervals"] = Quantity(rr, "s/1024")
    if energy is not None:
        values["energy_expended"] = Quantity(energy, "kJ")
    return Measurement("ble.heart_rate", "heart_rate", values, flags=flags, raw=bytes([0, int(bpm) & 0xFF]))


def test_four_hertz_for_three_minutes_gives_one_reading_per_minute_with_the_median() -> None:
    window = HeartRateWindow(cadence_s=60)
    closed = []
    for i in range(4 * 180):
        at = T0 + timedelta(seconds=i / 4)
        minute = i // 240
        bpm = 60 + minute * 10 + (i % 5)  # per minute: values base..base+4, median base+2
        result = window.add(hr(bpm), at)
        if result is not None:
            closed.append(result)
    last = window.flush(T0 + timedelta(seconds=180))
    assert last is not None
    closed.append(last)
    assert [m.values["heart_rate"].value for m in closed] == [62.0, 72.0, 82.0]
    assert [m.details["samples"] for m in closed] == [240, 240, 240]
    assert closed[0].details["window_start"] == T0.isoformat()
    assert closed[0].details["window_end"] == (T0 + timedelta(minutes=1)).isoformat()
    assert all(m.device_time is None and m.sequence is None for m in closed)


def test_nothing_is_emitted_until_a_window_closes() -> None:
    window = HeartRateWindow(cadence_s=60)
    assert window.add(hr(70), T0 + timedelta(seconds=1)) is None
    assert window.add(hr(71), T0 + timedelta(seconds=59)) is None
    assert window.pending == 2
    assert window.flush(T0 + timedelta(seconds=60)) is not None
    assert window.flush(T0 + timedelta(seconds=61)) is None


def test_rr_intervals_are_all_kept_energy_is_the_max_and_flags_are_united() -> None:
    window = HeartRateWindow(cadence_s=10)
    window.add(hr(80, rr=(800, 810), energy=100), T0)
    window.add(hr(82, rr=(790,), energy=102, flags=("sensor_contact_lost",)), T0 + timedelta(seconds=1))
    window.add(hr(81, energy=101), T0 + timedelta(seconds=2))
    result = window.add(hr(90), T0 + timedelta(seconds=11))
    assert result is not None
    assert result.values["rr_intervals"] == Quantity((800, 810, 790), "s/1024")
    assert result.values["energy_expended"].value == 102
    assert result.flags == ("sensor_contact_lost",)
    # The sample without skin contact does not count towards the median.
    assert result.values["heart_rate"].value == 80.5


def test_windows_align_to_the_cadence_so_ids_do_not_depend_on_when_the_session_began() -> None:
    device = DeviceInfo(uid="ble:AA:BB:CC:DD:EE:01", transport="ble", profile="ble.heart_rate")
    ids = []
    for offset_s in (3, 17):
        window = HeartRateWindow(cadence_s=60)
        window.add(hr(70), T0 + timedelta(seconds=offset_s))
        window.add(hr(70), T0 + timedelta(seconds=40))
        aggregate = window.flush(T0 + timedelta(seconds=60))
        assert aggregate is not None
        reading = to_reading(device, aggregate, None, T0 + timedelta(seconds=60),
                             discriminator=aggregate.details["window_start"])
        ids.append(reading.id)
    assert ids[0] == ids[1]


def test_consecutive_windows_get_different_reading_ids() -> None:
    device = DeviceInfo(uid="ble:AA:BB:CC:DD:EE:01", transport="ble", profile="ble.heart_rate")
    window = HeartRateWindow(cadence_s=60)
    window.add(hr(70), T0)
    first = window.add(hr(70), T0 + timedelta(seconds=61))
    second = window.flush(T0 + timedelta(seconds=120))
    assert first is not None and second is not None
    received = T0 + timedelta(minutes=2)
    ids = {to_reading(device, m, None, received, discriminator=m.details["window_start"]).id for m in (first, second)}
    assert len(ids) == 2


def test_cadence_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HeartRateWindow(cadence_s=0)
