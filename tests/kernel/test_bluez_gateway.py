"""The gateway's own BLE path (BleManager -> BleSession -> driver) against our simulators served through
real BlueZ in the guest: scan on hci0, connect, pair and bond, download, reconnect bonded."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.kernel.harness import GuestResult, run_in_guest

pytestmark = pytest.mark.kernel

CENTRAL = "python tests/kernel/guest/gateway_central.py $ADDRESS"
# RPM_KERNEL_VERBOSE=1 logs every D-Bus call the peripheral gets and bleak's D-Bus traffic.
GUEST_ENV = {"PERIPHERAL_ARGS": "--verbose", "CENTRAL_ARGS": "--debug"} if os.environ.get("RPM_KERNEL_VERBOSE") else {}


def glucose_record(sequence: int, minute: int, mg_dl: int) -> dict[str, Any]:
    return {
        "sequence": sequence,
        "base_time": f"2026-01-01T08:{minute:02d}:00",
        "concentration": mg_dl / 100_000,  # kg/L: 100 mg/dL is 0.001 kg/L
        "unit": "kg/L",
    }


def guest_script(spec: dict[str, Any], steps: str) -> str:
    """Start the peripheral on hci1, wait until it advertises, run ``steps`` (with $ADDRESS and $P, the
    peripheral's pid), then stop the peripheral so it writes its report."""
    return f"""
set -u
R=$RPM_RESULTS
cat > $R/peripheral.json <<'JSON'
{json.dumps(spec)}
JSON
python -m firmware_sims.ble.bluez_peripheral --scenario $R/peripheral.json --adapter hci1 \\
  --ready $R/ready.json --report $R/report.json --passkey-file $R/passkey ${{PERIPHERAL_ARGS:-}} \\
  > $R/peripheral.log 2>&1 &
P=$!
for i in $(seq 100); do [ -s $R/ready.json ] && break; sleep 0.1; done
ADDRESS=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' $R/ready.json)
bonds() {{ grep -l 'LongTermKey\\]' /var/lib/bluetooth/*/*/info 2>/dev/null | wc -l; }}
rc=0
{steps}
kill -TERM $P; wait $P
cp /var/log/bluetoothd.log $R/ 2>/dev/null
exit $rc
"""


def lines(result: GuestResult, name: str) -> list[dict[str, Any]]:
    path = result.results / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def summary(result: GuestResult, name: str) -> dict[str, Any]:
    return json.loads((result.results / name).read_text())


def explain(result: GuestResult) -> str:
    parts = []
    for name in ("central1.log", "central2.log", "peripheral.log"):
        path: Path = result.results / name
        if path.exists():
            parts.append(f"--- {name} ---\n{path.read_text()[-3000:]}")
    return "\n".join(parts)


GLUCOSE_METER = {
    "type": "glucose",
    "address": "C0:FF:EE:00:00:02",
    "name": "SIM-GLUCO meter",
    "serial": "GL-0002",
    "security": "encrypt",
    "records": [glucose_record(i, i, 90 + 7 * i) for i in range(1, 6)],
    "later_records": [glucose_record(i, i, 90 + 7 * i) for i in range(6, 9)],
}


GLUCOSE_STEPS = """
$CENTRAL --profile ble.glucose --state $R/state --readings $R/readings1.jsonl ${CENTRAL_ARGS:-} \\
  > $R/central1.json 2> $R/central1.log || rc=1
echo "bonds after first session: $(bonds)" > $R/bonds; cat /var/lib/bluetooth/*/*/info > $R/info.txt 2>&1
kill -USR1 $P
for i in $(seq 50); do grep -q 'records now' $R/peripheral.log && break; sleep 0.1; done
$CENTRAL --profile ble.glucose --state $R/state --readings $R/readings2.jsonl ${CENTRAL_ARGS:-} \\
  > $R/central2.json 2> $R/central2.log || rc=1
echo "bonds after second session: $(bonds)" >> $R/bonds
""".replace("$CENTRAL", CENTRAL)


@pytest.mark.timeout(420)
def test_a_bonded_glucose_meter_is_downloaded_incrementally_through_bluez() -> None:
    steps = GLUCOSE_STEPS
    result = run_in_guest(guest_script(GLUCOSE_METER, steps), timeout=300, env=GUEST_ENV)
    result.check()
    first, second = summary(result, "central1.json"), summary(result, "central2.json")
    read1, read2 = lines(result, "readings1.jsonl"), lines(result, "readings2.jsonl")
    context = explain(result)
    # First contact: paired (Just Works) and bonded, the whole memory downloaded.
    assert "paired and bonded" in first["notes"], context
    assert [r["sequence"] for r in read1] == [1, 2, 3, 4, 5], context
    assert (result.results / "bonds").read_text().split("\n")[0].endswith(": 2"), context
    # The meter measured again; the gateway, restarted, reconnects bonded (no new pairing) and
    # takes only the new records: no duplicate, no gap.
    assert "paired and bonded" not in second["notes"], context
    assert [r["sequence"] for r in read2] == [6, 7, 8], context
    assert second["cursor"] == 8
    report = json.loads((result.results / "report.json").read_text())
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

BP_STEPS = """
$CENTRAL --profile ble.blood_pressure --state $R/state --readings $R/readings1.jsonl ${CENTRAL_ARGS:-} \\
  > $R/central1.json 2> $R/central1.log || rc=1
echo "bonds: $(bonds)" > $R/bonds
""".replace("$CENTRAL", CENTRAL)


@pytest.mark.timeout(300)
def test_a_cuff_hands_over_its_memory_after_pairing_through_bluez() -> None:
    result = run_in_guest(guest_script(BP_CUFF, BP_STEPS), timeout=200, env=GUEST_ENV)
    result.check()
    first = summary(result, "central1.json")
    readings = lines(result, "readings1.jsonl")
    context = explain(result)
    # Blood Pressure Measurement (0x2A35) is encrypt-indicate: the cuff's memory comes only once the
    # gateway has paired; every stored record arrives, in order, with its values and time.
    assert "paired and bonded" in first["notes"], context
    assert (result.results / "bonds").read_text().strip() == "bonds: 2", context
    assert [r["time"] for r in readings] == [r["timestamp"] for r in BP_CUFF["records"]], context
    for reading, stored in zip(readings, BP_CUFF["records"], strict=True):
        values = {name: value for name, (value, _unit) in reading["values"].items()}
        assert values["systolic"] == stored["systolic"] and values["diastolic"] == stored["diastolic"], reading
    report = json.loads((result.results / "report.json").read_text())
    assert readings and len(report["sent_frames"]) == len(readings)
    print(json.dumps({"first": first, "guest_s": round(result.duration_s, 1)}))


DROPPING_METER = {
    **{key: value for key, value in GLUCOSE_METER.items() if key != "later_records"},
    "records": [glucose_record(i, i, 90 + 7 * i) for i in range(1, 9)],
    # The meter ends the link after its third record of the first session (battery contact, a walk
    # out of range); the next session must resume after record 3.
    "faults": {"drop_after_records": 3, "drop_times": 1},
}

DROP_STEPS = """
$CENTRAL --profile ble.glucose --state $R/state --readings $R/readings1.jsonl ${CENTRAL_ARGS:-} \\
  > $R/central1.json 2> $R/central1.log || rc=1
""".replace("$CENTRAL", CENTRAL)


@pytest.mark.timeout(300)
def test_a_link_dropped_mid_download_resumes_without_gap_or_duplicate() -> None:
    result = run_in_guest(guest_script(DROPPING_METER, DROP_STEPS), timeout=200, env=GUEST_ENV)
    result.check()
    first = summary(result, "central1.json")
    readings = lines(result, "readings1.jsonl")
    context = explain(result)
    report = json.loads((result.results / "report.json").read_text())
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
    result = run_in_guest(guest_script(PASSKEY_METER, PASSKEY_STEPS), timeout=200, env=GUEST_ENV)
    result.check()
    first = summary(result, "central1.json")
    report = json.loads((result.results / "report.json").read_text())
    context = explain(result)
    # The meter displayed one passkey, the gateway's agent was asked for it once and entered it, and
    # the authenticated-only characteristic was then readable.
    assert first["paired_now"] is True, context
    assert len(first["asked"]) == 1 and len(report["passkeys"]) == 1, (first, report["passkeys"])
    assert (result.results / "passkey").read_text().strip() == report["passkeys"][0]
    assert first["feature"], context
    assert (result.results / "bonds").read_text().strip() == "bonds: 2", context
    print(json.dumps({"first": first, "guest_s": round(result.duration_s, 1)}))
