"""From a codec's :class:`Measurement` (device units, device time) to a contract :class:`Reading`
(canonical units, corrected UTC time, deterministic id). Policy, not bytes: codecs stay pure."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo

from gateway.codecs.common import Measurement, Quantity
from gateway.contract import Clock, ClockJudgement, Device, Reading, Value, compute_reading_id
from gateway.drivers.base import CLOCK_TOLERANCE, EARLIEST_PLAUSIBLE, FUTURE_TOLERANCE, ClockCheck, DeviceInfo
from gateway.drivers.device_strings import clean_device_string
from gateway.metrics import METRICS


def canonical_value(metric_name: str, quantity: Quantity) -> Value:
    """Convert to the metric's canonical unit, keeping the original where it differs."""
    metric = METRICS[metric_name]
    if isinstance(quantity.value, tuple):
        converted: float | list[float] = [round(metric.to_canonical(v, quantity.unit), 6) for v in quantity.value]
        original: float | list[float] = list(quantity.value)
    else:
        converted = round(metric.to_canonical(quantity.value, quantity.unit), 6)
        original = quantity.value
    if quantity.unit == metric.unit:
        return Value(value=converted, unit=metric.unit)
    return Value(value=converted, unit=metric.unit, original_value=original, original_unit=quantity.unit)


def canonical_values(measurement: Measurement) -> dict[str, Value]:
    return {name: canonical_value(name, q) for name, q in measurement.values.items()}


def plausibility_flags(values: dict[str, Value]) -> list[str]:
    for name, value in values.items():
        plausible = METRICS[name].plausible
        if plausible is None:
            continue
        numbers = value.value if isinstance(value.value, list) else [value.value]
        if any(not (plausible[0] <= n <= plausible[1]) for n in numbers):
            return ["out_of_plausible_range"]
    return []


def judge_time(
    device_time: datetime | None,
    clock: ClockCheck | None,
    received_at: datetime,
    local_tz: tzinfo | None = None,
) -> tuple[datetime, Clock, bool]:
    """Return (measured_at UTC, clock judgement, clock_unset) for a device time.

    The device time is local wall-clock time in the gateway's zone. Where the device clock was read at
    connect and differs by more than the tolerance, the offset is subtracted. Unknown or implausible
    times fall back to the gateway's receive time and say so.
    """
    tz = local_tz or received_at.astimezone().tzinfo or UTC
    offset = None
    if clock is not None and clock.device_now is not None:
        offset = clock.device_now - clock.gateway_now.astimezone(tz).replace(tzinfo=None)
    offset_s = None if offset is None else round(offset.total_seconds(), 3)
    clock_unset = clock is not None and clock.unset
    if device_time is None or device_time < EARLIEST_PLAUSIBLE or clock_unset:
        return received_at.astimezone(UTC), Clock(judgement=ClockJudgement.GATEWAY, offset_s=offset_s), True
    judgement = ClockJudgement.DEVICE
    local = device_time
    gateway_time = received_at.astimezone(UTC), Clock(judgement=ClockJudgement.GATEWAY, offset_s=offset_s), True
    try:
        if offset is not None and abs(offset) > CLOCK_TOLERANCE:
            local = device_time - offset
            judgement = ClockJudgement.CORRECTED
        measured_at = local.replace(tzinfo=tz).astimezone(UTC)
    except OverflowError:
        # A clock set near year 1 or 9999 and then "corrected" leaves the calendar: no time to trust.
        return gateway_time
    # A clock far ahead corrects an old record to before any plausible time: as implausible as the future.
    if local < EARLIEST_PLAUSIBLE or measured_at > received_at + FUTURE_TOLERANCE:
        return gateway_time
    return measured_at, Clock(judgement=judgement, offset_s=offset_s), False


def to_reading(
    device: DeviceInfo,
    measurement: Measurement,
    clock: ClockCheck | None,
    received_at: datetime,
    *,
    local_tz: tzinfo | None = None,
    discriminator: str | None = None,
) -> Reading:
    """Build the contract reading. ``discriminator`` identifies records that have neither a sequence
    number nor a device time; a heart-rate window's start (``details["window_start"]``) is the default,
    so two windows with the same median never share an id."""
    # A stored record with neither sequence nor time (a clockless oximeter) names itself in "record_key".
    discriminator = discriminator or measurement.details.get("window_start") or measurement.details.get("record_key")
    values = canonical_values(measurement)
    window_end = measurement.details.get("window_end")
    if measurement.device_time is None and window_end:
        # A live window (heart rate) is timed by the gateway's own clock by design: not an unset clock.
        measured_at = datetime.fromisoformat(window_end).astimezone(UTC)
        clock_info, clock_unset = Clock(judgement=ClockJudgement.GATEWAY), False
    else:
        measured_at, clock_info, clock_unset = judge_time(measurement.device_time, clock, received_at, local_tz)
        if "clock_unset" in measurement.flags and not clock_unset:
            # The record itself says its clock was never set (PLXS flag bit 4): its time is no time.
            measured_at, clock_info, clock_unset = received_at.astimezone(UTC), Clock(
                judgement=ClockJudgement.GATEWAY, offset_s=clock_info.offset_s), True
    raw_values = {
        name: (list(q.value) if isinstance(q.value, tuple) else q.value, q.unit)
        for name, q in measurement.values.items()
    }
    reading_id = compute_reading_id(
        device.uid,
        measurement.kind,
        measurement.user_index,
        sequence=measurement.sequence,
        device_time=measurement.device_time,
        raw_values=raw_values,
        discriminator=discriminator if measurement.device_time is None and measurement.sequence is None
        else None,
    )
    flags = list(dict.fromkeys([*measurement.flags, *plausibility_flags(values), *(
        ["clock_unset"] if clock_unset else [])]))
    return Reading(
        id=reading_id,
        device=Device(
            uid=device.uid,
            transport=device.transport,
            profile=device.profile,
            # Drivers clean what they read; strings from elsewhere (USB descriptors) are cleaned here.
            model=clean_device_string(device.model),
            serial=clean_device_string(device.serial),
            manufacturer=clean_device_string(device.manufacturer),
        ),
        user_index=measurement.user_index,
        kind=measurement.kind,
        measured_at=measured_at,
        received_at=received_at,
        device_time=measurement.device_time,
        clock=clock_info,
        sequence=measurement.sequence,
        values=values,
        flags=flags,
        raw=measurement.raw.hex(),
        body_site=measurement.details.get("temperature_type") if measurement.kind == "body_temperature" else None,
    )
