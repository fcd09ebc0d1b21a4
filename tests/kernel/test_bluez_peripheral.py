"""The simulators served through real BlueZ (firmware_sims.ble.bluez_peripheral), read by bleak's BlueZ
backend on the other controller of the guest."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.kernel.harness import run_in_guest

pytestmark = pytest.mark.kernel

GLUCOSE_METER = {
    "type": "glucose",
    "address": "C0:FF:EE:00:00:02",
    "name": "SIM-GLUCO meter",
    "serial": "GL-0002",
    "security": "encrypt",
    "records": [
        {"sequence": i, "base_time": "2026-01-01T08:00:00", "concentration": 0.00095, "unit": "kg/L"}
        for i in range(1, 6)
    ],
}


def serve_and_run(spec: dict[str, object], central: str) -> str:
    """A guest script: start the peripheral on hci1, wait until it advertises, run ``central`` (with
    $ADDRESS set to the peripheral's), then stop the peripheral so it writes its report."""
    return f"""
set -u
R=$RPM_RESULTS
cat > $R/peripheral.json <<'JSON'
{json.dumps(spec)}
JSON
python -m firmware_sims.ble.bluez_peripheral --scenario $R/peripheral.json --adapter hci1 \\
  --ready $R/ready.json --report $R/report.json --passkey-file $R/passkey > $R/peripheral.log 2>&1 &
P=$!
for i in $(seq 100); do [ -s $R/ready.json ] && break; sleep 0.1; done
ADDRESS=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["address"])' $R/ready.json)
{central}
rc=$?
kill -TERM $P; wait $P
cp /var/log/bluetoothd.log $R/ 2>/dev/null
exit $rc
"""


def test_guest_boots_with_two_le_controllers() -> None:
    result = run_in_guest("ls /sys/class/bluetooth; python -c 'import bleak, dbus_fast; print(\"ok\")'", timeout=60)
    result.check()
    assert result.stdout.split() == ["hci0", "hci1", "ok"]


def test_a_simulated_meter_served_through_bluez_answers_bleak_byte_exact() -> None:
    central = f"python {shlex.quote('tests/kernel/guest/read_device_information.py')} $ADDRESS > $R/central.json"
    result = run_in_guest(serve_and_run(GLUCOSE_METER, central), timeout=180)
    result.check()
    central_view = json.loads((result.results / "central.json").read_text())
    report = json.loads((result.results / "report.json").read_text())
    # The simulator's own Device Information strings, through a real ATT read.
    assert central_view["model"] == "SIM-GLUCO"
    assert central_view["serial"] == "GL-0002"
    assert "00001808-0000-1000-8000-00805f9b34fb" in central_view["services"]
    assert report["sessions"] >= 1
