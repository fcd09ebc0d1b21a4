"""Measurement → Reading: canonical units, clock judgement, flags, and ids stable across re-reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.codecs.common import Measurement, Quantity
from gateway.contract import ClockJudgement
from gateway.drivers.base import ClockCheck, DeviceInfo
from gateway.metrics import KG_PER_LB, MMHG_PER_KPA
from gateway.readings.normalise import to_reading

pytestmark = pytest.mark.unit

PARIS = ZoneInfo("Europe/Paris")
DEVICE = DeviceInfo(uid="ble:00:11:22:33:44:55", transport="ble", profile="ble.blood_pressure")
RECEIVED = datetime(2026, 3, 14, 12, 0, tzinfo=UTC)


def bp(device_time: datetime | None, systolic: float = 18.9, unit: str = "kPa") -> Measurement:
    return Measurement(
        profile="ble.blood_pressure",
        kind="blood_pressure",
        values={"systolic": Quantity(systolic, unit), "diastolic": Quantity(11.0, unit)},
        device_time=device_time,
        user_index=1,
        raw=b"\x01\x02",
    )


def test_kpa_is_converted_and_the_original_kept() -> None:
    reading = to_reading(DEVICE, bp(datetime(2026, 3, 14, 8, 0)), None, RECEIVED, local_tz=PARIS)
    systolic = reading.values["systolic"]
    assert systolic.unit == "mm[Hg]"
    assert systolic.value == pytest.approx(18.9 * MMHG_PER_KPA)
    assert (systolic.original_value, systolic.original_unit) == (18.9, "kPa")
    assert reading.raw == "0102"


def test_pounds_become_kilograms() -> None:
    weight = Measurement("ble.weight_scale", "body_weight", {"body_weight": Quantity(200.0, "[lb_av]")},
                         device_time=datetime(2026, 3, 14, 8, 0))
    reading = to_reading(DEVICE, weight, None, RECEIVED, local_tz=PARIS)
    assert reading.values["body_weight"].value == pytest.approx(200 * KG_PER_LB)


def test_device_local_time_becomes_utc_when_the_clock_agrees() -> None:
    clock = ClockCheck(gateway_now=RECEIVED, device_now=datetime(2026, 3, 14, 13, 0, 30))
    reading = to_reading(DEVICE, bp(datetime(2026, 3, 14, 8, 0)), clock, RECEIVED, local_tz=PARIS)
    assert reading.measured_at == datetime(2026, 3, 14, 7, 0, tzinfo=UTC)
    assert reading.clock.judgement is ClockJudgement.DEVICE
    assert reading.clock.offset_s == 30


def test_a_fast_device_clock_is_corrected_but_the_id_does_not_move() -> None:
    # The cuff's clock runs 1 h 10 min fast: its 09:10 is the gateway's 08:00 local.
    fast = ClockCheck(gateway_now=RECEIVED, device_now=datetime(2026, 3, 14, 14, 10))
    right = ClockCheck(gateway_now=RECEIVED, device_now=datetime(2026, 3, 14, 13, 0))
    corrected = to_reading(DEVICE, bp(datetime(2026, 3, 14, 9, 10)), fast, RECEIVED, local_tz=PARIS)
    assert corrected.measured_at == datetime(2026, 3, 14, 7, 0, tzinfo=UTC)
    assert corrected.clock.judgement is ClockJudgement.CORRECTED
    assert corrected.device_time == datetime(2026, 3, 14, 9, 10)
    reread = to_reading(DEVICE, bp(datetime(2026, 3, 14, 9, 10)), right, RECEIVED + timedelta(days=1),
                        local_tz=PARIS)
    assert reread.id == corrected.id
    assert reread.measured_at != corrected.measured_at


@pytest.mark.parametrize("device_time", [None, datetime(2000, 1, 1, 0, 5), datetime(2027, 1, 1)])
def test_unknown_or_implausible_device_time_uses_the_gateway_time(device_time: datetime | None) -> None:
    reading = to_reading(DEVICE, bp(device_time), None, RECEIVED, local_tz=PARIS, discriminator="w1")
    assert reading.measured_at == RECEIVED
    assert reading.clock.judgement is ClockJudgement.GATEWAY
    assert "clock_unset" in reading.flags


def test_implausible_values_are_stored_with_a_flag_not_changed() -> None:
    reading = to_reading(DEVICE, bp(datetime(2026, 3, 14, 8, 0), systolic=320, unit="mm[Hg]"), None, RECEIVED,
                         local_tz=PARIS)
    assert reading.values["systolic"].value == 320
    assert "out_of_plausible_range" in reading.flags


def test_live_heart_rate_windows_are_timed_by_the_gateway_and_get_distinct_ids() -> None:
    def window(start: datetime) -> Measurement:
        return Measurement("ble.heart_rate", "heart_rate", {"heart_rate": Quantity(64.0, "/min")},
                           details={"window_start": start.isoformat(),
                                    "window_end": (start + timedelta(minutes=1)).isoformat()})

    first = to_reading(DEVICE, window(RECEIVED), None, RECEIVED + timedelta(minutes=1, seconds=2))
    second = to_reading(DEVICE, window(RECEIVED + timedelta(minutes=1)), None, RECEIVED + timedelta(minutes=2))
    assert first.id != second.id
    assert first.measured_at == RECEIVED + timedelta(minutes=1)
    assert first.clock.judgement is ClockJudgement.GATEWAY
    assert "clock_unset" not in first.flags


def test_a_correction_that_leaves_the_calendar_or_the_plausible_range_uses_the_gateway_time() -> None:
    from datetime import UTC, datetime

    from gateway.drivers.base import ClockCheck
    from gateway.readings.normalise import judge_time

    received = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
    # The device clock reads year 9999 at connect: an old record "corrected" by that offset overflows.
    far_ahead = ClockCheck(gateway_now=received, device_now=datetime(9999, 12, 31, 23, 0))
    assert judge_time(datetime(2026, 12, 3, 11, 0), far_ahead, received, UTC)[2] is True
    # Twenty years ahead: a record from 2026 would be corrected to 2006, before any plausible time.
    ahead = ClockCheck(gateway_now=received, device_now=datetime(2046, 12, 3, 12, 0))
    measured_at, clock, unset = judge_time(datetime(2026, 12, 3, 11, 0), ahead, received, UTC)
    assert (measured_at, clock.judgement, unset) == (received, "gateway", True)
    # A device time near the end of the calendar in a zone behind UTC overflows without a correction.
    from zoneinfo import ZoneInfo
    assert judge_time(datetime(9999, 12, 31, 23, 59), None, received, ZoneInfo("Pacific/Kiritimati"))[2] is True
