"""``rpm-gateway decode`` for the oximeter and thermometer profiles as a real process: the fixed JSON
on stdout and exit 0, or exit 2 and exactly one line on stderr for a malformed frame."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[3]


def _decode(profile: str, frame: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway.cli", "decode", "--profile", profile, frame],
                          capture_output=True, text=True, timeout=30, cwd=REPO)


def test_the_three_profiles_print_the_fixed_shape() -> None:
    cases = {
        "ble.plx_spot_check": "0161004800ea070c03080f00",
        # Continuous: normal 96 %/58, measurement status "questionable", sensor status "low perfusion".
        "ble.plx_continuous": "0c" "6000" "3a00" "0040" "200000",
        "ble.thermometer": "066e0100ffea070c03080f0006",
    }
    outs = {}
    for profile, frame in cases.items():
        done = _decode(profile, frame)
        assert done.returncode == 0, done.stderr
        outs[profile] = json.loads(done.stdout)
        assert set(outs[profile]) >= {"profile", "kind", "values", "device_time", "user_index", "sequence", "flags"}
    assert outs["ble.plx_continuous"]["values"]["spo2"] == {"value": 96.0, "unit": "%"}
    assert outs["ble.plx_continuous"]["flags"] == ["questionable_measurement", "low_perfusion"]
    assert outs["ble.plx_continuous"]["device_time"] is None
    assert outs["ble.thermometer"]["values"]["body_temperature"] == {"value": 36.6, "unit": "Cel"}


@pytest.mark.parametrize(("profile", "frame", "says"), [
    ("ble.plx_spot_check", "0161004800ea07", "timestamp"),
    ("ble.plx_spot_check", "0065004800", "spo2 at byte 1"),
    ("ble.plx_continuous", "08610048000000", "device and sensor status"),
    ("ble.thermometer", "01da03", "temperature"),
    ("ble.thermometer", "", "flags"),
])
def test_malformed_frames_exit_2_with_one_line(profile: str, frame: str, says: str) -> None:
    done = _decode(profile, frame)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and says in done.stderr
    assert "Traceback" not in done.stderr
