"""The weight scale (indications 0x2A9D, stored weighings) and the heart-rate strap (notifications
0x2A37, live windows) read by the gateway's BleManager through real BlueZ in the guest."""

from __future__ import annotations

import json
import statistics
from datetime import datetime
from typing import Any

import pytest

from tests.kernel.scenarios import central_session, run_scenario

pytestmark = pytest.mark.kernel

WEIGHT_SCALE = {
    "type": "weight_scale",
    "address": "C0:FF:EE:00:00:03",
    "name": "SIM-SCALE",
    "serial": "WS-0003",
    # No security: BlueZ 5.66's "encrypt-indicate" did not make it refuse an unencrypted subscription
    # (the scale's weighings arrived unpaired), so a refusal-driven pairing is not shown with a scale.
    "records": [
        # Multiples of the 0.005 kg resolution: what the scale stored is what must arrive.
        {"weight": 81.4 + 0.35 * i, "timestamp": f"2026-01-03T06:{30 + i:02d}:00", "user_id": 1}
        for i in range(4)
    ],
}

SCALE_STEPS = central_session("ble.weight_scale")


@pytest.mark.timeout(300)
def test_a_scale_indicates_its_stored_weighings_through_bluez() -> None:
    run = run_scenario(WEIGHT_SCALE, SCALE_STEPS)
    result, context, first, readings, report = run.result, run.context, run.summary(), run.lines(), run.report
    # Every stored weighing once, in order, exact; an open scale is not paired.
    assert "paired and bonded" not in first["notes"], context
    assert [r["time"] for r in readings] == [r["timestamp"] for r in WEIGHT_SCALE["records"]], context
    for reading, stored in zip(readings, WEIGHT_SCALE["records"], strict=True):
        value, unit = reading["values"]["body_weight"]
        assert (round(value, 3), unit) == (round(stored["weight"], 3), "kg"), reading
        assert reading["user"] == stored["user_id"], reading
    assert [r["raw"] for r in readings] == report["sent_frames"], context
    print(json.dumps({"first": first, "guest_s": round(result.duration_s, 1)}))


RATES = [60, 64, 75, 80]
HEART_RATE_STRAP = {
    "type": "heart_rate",
    "address": "C0:FF:EE:00:00:04",
    "name": "SIM-HRM strap",
    "serial": "HR-0004",
    "rates": RATES,
    "hz": 4.0,
    # Six seconds of wear, then the strap is taken off (it ends the link).
    "frames": 24,
}
CADENCE_S = 2.0

STRAP_STEPS = central_session("ble.heart_rate", args=f"--cadence {CADENCE_S}")


def rate_of(frame_hex: str) -> int:
    frame = bytes.fromhex(frame_hex)
    return int.from_bytes(frame[1:3], "little") if frame[0] & 0x01 else frame[1]


def rr_of(frame_hex: str) -> list[int]:
    """The RR intervals (1/1024 s) a Heart Rate Measurement frame carries (HRS 3.1.1.5), read here from
    what the strap sent, independently of the gateway's codec."""
    frame = bytes.fromhex(frame_hex)
    flags = frame[0]
    at = 1 + (2 if flags & 0x01 else 1) + (2 if flags & 0x08 else 0)
    if not flags & 0x10:
        return []
    return [int.from_bytes(frame[i : i + 2], "little") for i in range(at, len(frame) - 1, 2)]


@pytest.mark.timeout(300)
def test_a_strap_streams_live_windows_through_bluez() -> None:
    run = run_scenario(HEART_RATE_STRAP, STRAP_STEPS)
    result, context, first = run.result, run.context, run.summary()
    windows: list[dict[str, Any]] = run.lines()
    sent = run.report["sent_frames"]
    # At least the strap's six seconds; more when the gateway, whose session ended with the link, came back
    # for a second one before the guest stopped (a loaded machine; the strap then streams again).
    assert len(sent) >= HEART_RATE_STRAP["frames"], context
    # Every notified frame in exactly one window: none lost, none counted twice.
    assert sum(w["details"]["samples"] for w in windows) == len(sent), (windows, context)
    starts = [datetime.fromisoformat(w["details"]["window_start"]) for w in windows]
    assert starts == sorted(set(starts)), windows  # one reading per window, in order
    for window in windows:
        span = datetime.fromisoformat(window["details"]["window_end"]) - datetime.fromisoformat(
            window["details"]["window_start"]
        )
        assert span.total_seconds() <= CADENCE_S + 1e-6, window
    # Each window is the median of the frames it took, in the order the strap sent them; every RR
    # interval arrives once (1/1024 s units: the encoder's rounding, nothing more).
    taken = 0
    for window in windows:
        frames = sent[taken : taken + window["details"]["samples"]]
        taken += len(frames)
        assert window["values"]["heart_rate"][0] == statistics.median(rate_of(f) for f in frames), window
        assert window["raw"] in frames, window
    rr = [value for w in windows for value in w["values"]["rr_intervals"][0]]
    assert {w["values"]["rr_intervals"][1] for w in windows} == {"s/1024"}, windows
    assert rr == [value for frame in sent for value in rr_of(frame)], context
    assert len(windows) >= 3, windows  # six seconds at a two-second cadence
    print(json.dumps({"first": first, "windows": len(windows), "guest_s": round(result.duration_s, 1)}))
