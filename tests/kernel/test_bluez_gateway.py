"""The gateway's own BLE path (BleManager -> BleSession -> driver) against our simulators served through
real BlueZ in the guest: scan on hci0, connect, pair and bond, download, reconnect bonded."""

from __future__ import annotations

import json

import pytest

from tests.kernel.scenarios import GLUCOSE_METER, central_session, glucose_record, run_scenario

pytestmark = pytest.mark.kernel

GLUCOSE_STEPS = (
    central_session("ble.glucose", 1)
    + """echo "bonds after first session: $(bonds)" > $R/bonds; cat /var/lib/bluetooth/*/*/info > $R/info.txt 2>&1
kill -USR1 $P
for i in $(seq 50); do grep -q 'records now' $R/peripheral.log && break; sleep 0.1; done
"""
    + central_session("ble.glucose", 2)
    + """echo "bonds after second session: $(bonds)" >> $R/bonds
"""
)


@pytest.mark.timeout(420)
def test_a_bonded_glucose_meter_is_downloaded_incrementally_through_bluez() -> None:
    run = run_scenario(GLUCOSE_METER, GLUCOSE_STEPS, timeout=300)
    result, context = run.result, run.context
    first, second = run.summary(), run.summary("central2.json")
    read1, read2 = run.lines(), run.lines("readings2.jsonl")
    # First contact: paired (Just Works) and bonded, the whole memory downloaded.
    assert "paired and bonded" in first["notes"], context
    assert [r["sequence"] for r in read1] == [1, 2, 3, 4, 5], context
    assert (result.results / "bonds").read_text().split("\n")[0].endswith(": 2"), context
    # The meter measured again; the gateway, restarted, reconnects bonded (no new pairing) and
    # takes only the new records: no duplicate, no gap.
    assert "paired and bonded" not in second["notes"], context
    assert [r["sequence"] for r in read2] == [6, 7, 8], context
    assert second["cursor"] == 8
    report = run.report
    assert report["requests"][-1] != report["requests"][0]  # the second session asked for >= 6 only
    # Values and times exactly as the meter stored them (SFLOAT mantissa x 10^-5 kg/L).
    expected = {r["sequence"]: r for r in GLUCOSE_METER["records"] + GLUCOSE_METER["later_records"]}
    for reading in read1 + read2:
        stored = expected[reading["sequence"]]
        value, unit = reading["values"]["glucose"]
        assert (round(value, 8), unit) == (round(stored["concentration"], 8), "kg/L"), reading
        assert reading["time"] == stored["base_time"], reading
    print(json.dumps({"first": first, "second": second, "guest_s": round(result.duration_s, 1)}))


BP_CUFF = {
    "type": "blood_pressure",
    "address": "C0:FF:EE:00:00:01",
    "name": "SIM-BP cuff",
    "serial": "BP-0001",
    "security": "encrypt",
    "records": [
        {
            "systolic": 118 + i,
            "diastolic": 76 + i,
            "mean_arterial": 90 + i,
            "pulse": 64 + i,
            "timestamp": f"2026-01-02T07:{10 + i:02d}:00",
        }
        for i in range(4)
    ],
}

BP_STEPS = central_session("ble.blood_pressure") + 'echo "bonds: $(bonds)" > $R/bonds\n'


@pytest.mark.timeout(300)
def test_a_cuff_hands_over_its_memory_after_pairing_through_bluez() -> None:
    run = run_scenario(BP_CUFF, BP_STEPS)
    result, context, first, readings = run.result, run.context, run.summary(), run.lines()
    # Blood Pressure Measurement (0x2A35) is encrypt-indicate: the cuff's memory comes only once the
    # gateway has paired; every stored record arrives, in order, with its values and time.
    assert "paired and bonded" in first["notes"], context
    assert (result.results / "bonds").read_text().strip() == "bonds: 2", context
    assert [r["time"] for r in readings] == [r["timestamp"] for r in BP_CUFF["records"]], context
    for reading, stored in zip(readings, BP_CUFF["records"], strict=True):
        values = {name: value for name, (value, _unit) in reading["values"].items()}
        assert values["systolic"] == stored["systolic"] and values["diastolic"] == stored["diastolic"], reading
    assert readings and len(run.report["sent_frames"]) == len(readings)
    print(json.dumps({"first": first, "guest_s": round(result.duration_s, 1)}))


DROPPING_METER = {
    **{key: value for key, value in GLUCOSE_METER.items() if key != "later_records"},
    "records": [glucose_record(i, i, 90 + 7 * i) for i in range(1, 9)],
    # The meter ends the link after its third record of the first session (battery contact, a walk
    # out of range); the next session must resume after record 3.
    "faults": {"drop_after_records": 3, "drop_times": 1},
}

DROP_STEPS = central_session("ble.glucose")


@pytest.mark.timeout(300)
def test_a_link_dropped_mid_download_resumes_without_gap_or_duplicate() -> None:
    run = run_scenario(DROPPING_METER, DROP_STEPS)
    result, context, first, readings, report = run.result, run.context, run.summary(), run.lines(), run.report
    # The first session lost its link after three records (a failed session); the gateway's retry
    # asked for records from 4 on and took the rest: every record once, in order.
    assert any("link lost" in error for error in first["errors"]), context
    assert report["requests"][:2] == ["0101", "0103010400"], (report["requests"], context)
    assert [r["sequence"] for r in readings] == list(range(1, 9)), context
    assert report["sent_sequences"] == list(range(1, 9)), context
    assert first["cursor"] == 8
    print(json.dumps({"first": first, "guest_s": round(result.duration_s, 1)}))


PASSKEY_METER = {
    **{key: value for key, value in GLUCOSE_METER.items() if key != "later_records"},
    # MITM-protected: Just Works cannot satisfy it; the meter displays a passkey the gateway enters.
    "security": "authenticated",
    "capability": "DisplayOnly",
}

PASSKEY_STEPS = """
python tests/kernel/guest/pair_with_passkey.py $ADDRESS $R/passkey > $R/central1.json 2> $R/central1.log || rc=1
echo "bonds: $(bonds)" > $R/bonds
"""


@pytest.mark.timeout(300)
def test_a_meter_showing_a_passkey_is_paired_by_passkey_entry() -> None:
    run = run_scenario(PASSKEY_METER, PASSKEY_STEPS)
    result, context, first, report = run.result, run.context, run.summary(), run.report
    # The meter displayed one passkey, the gateway's agent was asked for it once and entered it, and
    # the authenticated-only characteristic was then readable.
    assert first["paired_now"] is True, context
    assert len(first["asked"]) == 1 and len(report["passkeys"]) == 1, (first, report["passkeys"])
    assert (result.results / "passkey").read_text().strip() == report["passkeys"][0]
    assert first["feature"], context
    assert (result.results / "bonds").read_text().strip() == "bonds: 2", context
    print(json.dumps({"first": first, "guest_s": round(result.duration_s, 1)}))
