"""``rpm-gateway decode --profile PROFILE HEX`` as specs/metrics.md fixes it: one JSON object on stdout
and exit 0, or exit 2 and one line on stderr, never a traceback. Run as a real subprocess for the
process-level contract; the many frame cases go through ``gateway.readings.decode.run`` in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.readings.decode import PROFILES, run

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "decode", *args],
        capture_output=True, text=True, timeout=30, cwd=REPO,
    )


def test_blood_pressure_frame_prints_the_fixed_json_form() -> None:
    # BLS 1.1 3.1, built by hand: mmHg 142/90/107, 2026-03-14 07:05:09, pulse 72, user 2, irregular pulse.
    frame = "1e" "8e00" "5a00" "6b00" "ea07030e070509" "4800" "02" "0400"
    done = _cli("--profile", "ble.blood_pressure", frame)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["profile"] == "ble.blood_pressure" and out["kind"] == "blood_pressure"
    assert out["values"] == {
        "systolic": {"value": 142.0, "unit": "mm[Hg]"},
        "diastolic": {"value": 90.0, "unit": "mm[Hg]"},
        "mean_arterial": {"value": 107.0, "unit": "mm[Hg]"},
        "pulse_rate": {"value": 72.0, "unit": "/min"},
    }
    assert out["device_time"] == "2026-03-14T07:05:09"
    assert out["user_index"] == 2 and out["sequence"] is None
    assert out["flags"] == ["irregular_pulse"]


def test_kpa_values_are_converted_and_keep_the_original() -> None:
    # Published vector (Nordic / blessed-android, specs/ble-gatt.md): kPa 18.9/11.0/15.9.
    done = _cli("--profile", "ble.blood_pressure", "15 bd f0 0b 00 9f f0 3c 00 12 00")
    out = json.loads(done.stdout)
    assert out["values"]["systolic"] == {
        "value": round(18.9 * 7.500615758, 6), "unit": "mm[Hg]", "original_value": 18.9, "original_unit": "kPa",
    }
    assert out["flags"] == ["cuff_too_loose", "pulse_rate_below_range"]


def test_glucose_published_vector() -> None:
    done = _cli("--profile", "ble.glucose", "1b0100e307021b0b0a1efbff1e00120501")
    out = json.loads(done.stdout)
    assert out["kind"] == "glucose" and out["sequence"] == 1
    assert out["device_time"] == "2019-02-27T11:05:30"  # base time plus the -5 min offset
    assert out["values"]["glucose"]["unit"] == "mg/dL"
    assert out["values"]["glucose"]["original_value"] == 30.0
    assert out["values"]["glucose"]["original_unit"] == "kg/L"
    assert out["flags"] == ["device_battery_low", "sample_size_insufficient", "temperature_too_low"]


def test_heart_rate_published_vector_has_rr_list_in_seconds() -> None:
    out = json.loads(_cli("--profile", "ble.heart_rate", "1f0101320101000201ffff").stdout)
    assert out["values"]["heart_rate"] == {"value": 257.0, "unit": "/min"}
    assert out["values"]["energy_expended"] == {"value": 306.0, "unit": "kJ"}
    rr = out["values"]["rr_intervals"]
    assert rr["unit"] == "s" and rr["value"] == [round(x / 1024, 6) for x in (1, 258, 65535)]
    assert out["device_time"] is None and out["user_index"] is None


def test_truncated_frame_exits_2_with_one_line() -> None:
    # Flags announce a time stamp at byte 7; the frame has 7 bytes.
    done = _cli("--profile", "ble.blood_pressure", "028e005a006b00")
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    assert "truncated" in lines[0] and "time stamp" in lines[0] and "byte 7" in lines[0]


def test_unknown_profile_and_bad_hex_exit_2() -> None:
    for args in (("--profile", "ble.nope", "00"), ("--profile", "ble.heart_rate", "0g55")):
        done = _cli(*args)
        assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
        assert "Traceback" not in done.stderr


def test_installed_entry_point_runs_decode() -> None:
    script = Path(sys.executable).with_name("rpm-gateway")
    if not script.exists():
        pytest.skip("rpm-gateway entry point not installed in this environment")
    done = subprocess.run([str(script), "decode", "--profile", "ble.heart_rate", "0055"],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and json.loads(done.stdout)["values"]["heart_rate"]["value"] == 85.0


@pytest.mark.parametrize(
    ("profile", "frame", "values", "flags"),
    [
        ("ble.weight_scale", "0e" "f537" "e40701020a1530" "02" "f000" "d206",
         {"body_weight": 71.625, "bmi": 24.0, "height": 1.746}, []),
        ("ble.weight_scale", "01" "9c3d", {"body_weight": round(157.72 * 0.45359237, 6)}, []),
        ("ble.weight_scale", "00ffff", {}, ["measurement_unsuccessful"]),
        ("ble.heart_rate", "04ff", {"heart_rate": 255.0}, ["sensor_contact_lost"]),
        ("ble.blood_pressure", "00ff07ff07ff07", {}, ["measurement_unsuccessful"]),
        ("ble.glucose", "02" "0700" "ea07030e070509" "5fb0" "1a", {"glucose": 95.0}, ["control_solution"]),
        ("ble.glucose", "06" "0800" "ea07030e070509" "35c0" "11", {"glucose": round(0.0053 * 18015.6, 6)}, []),
    ],
)
def test_frames_in_process(capsys, profile: str, frame: str, values: dict[str, float], flags: list[str]) -> None:
    assert run(profile, frame) == 0
    out = json.loads(capsys.readouterr().out)
    assert {k: v["value"] for k, v in out["values"].items()} == values
    assert out["flags"] == flags


@pytest.mark.parametrize(
    ("profile", "frame", "expected"),
    [
        ("ble.glucose", "1b0100e3", "base time"),
        ("ble.weight_scale", "08 1027", "bmi"),
        ("ble.heart_rate", "1055040102", "rr interval"),
        ("ble.glucose", "00 0100 e407 0d 01 00 00 00", "base time"),
        ("ble.heart_rate", "", "flags"),
    ],
)
def test_bad_frames_in_process_exit_2_naming_the_field(capsys, profile: str, frame: str, expected: str) -> None:
    assert run(profile, frame) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and expected in captured.err and "byte" in captured.err


def test_ble_profiles_are_registered() -> None:
    assert {"ble.blood_pressure", "ble.glucose", "ble.weight_scale", "ble.heart_rate"} <= set(PROFILES)
