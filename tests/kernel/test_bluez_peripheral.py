"""The simulators served through real BlueZ (firmware_sims.ble.bluez_peripheral), read by bleak's BlueZ
backend on the other controller of the guest."""

from __future__ import annotations

import json
import shlex

import pytest

from tests.kernel.harness import run_in_guest
from tests.kernel.scenarios import GLUCOSE_METER, guest_script

pytestmark = pytest.mark.kernel

def test_guest_boots_with_two_le_controllers() -> None:
    result = run_in_guest("ls /sys/class/bluetooth; python -c 'import bleak, dbus_fast; print(\"ok\")'", timeout=60)
    result.check()
    assert result.stdout.split() == ["hci0", "hci1", "ok"]


def test_a_simulated_meter_served_through_bluez_answers_bleak_byte_exact() -> None:
    central = (f"python {shlex.quote('tests/kernel/guest/read_device_information.py')} $ADDRESS"
               " > $R/central.json || rc=1")
    result = run_in_guest(guest_script(GLUCOSE_METER, central), timeout=180)
    result.check()
    central_view = json.loads((result.results / "central.json").read_text())
    report = json.loads((result.results / "report.json").read_text())
    # The simulator's own Device Information strings, through a real ATT read.
    assert central_view["model"] == "SIM-GLUCO"
    assert central_view["serial"] == "GL-0002"
    assert "00001808-0000-1000-8000-00805f9b34fb" in central_view["services"]
    assert report["sessions"] >= 1
