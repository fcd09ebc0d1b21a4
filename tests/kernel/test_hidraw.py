"""USB HID meters through real hidraw, in the UML guest: a Contour Next USB (ASTM in HID reports) and a
TaiDoc meter behind a CP2110 bridge, made real by /dev/uhid and read by the gateway's USB manager
(sysfs discovery by VID/PID, the profile table's link and driver). The guest side is
tests/kernel/hid_guest.py; one boot serves every test here."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.kernel.harness import run_in_guest

pytestmark = pytest.mark.kernel

GLUCOSE_BASE = datetime(2026, 11, 20, 7, 30)


@pytest.fixture(scope="module")
def guest() -> dict[str, Any]:
    result = run_in_guest(
        '.venv/bin/python -m tests.kernel.hid_guest "$RPM_RESULTS/hid.json"', bluetooth=False, timeout=400
    ).check()
    data = json.loads((result.results / "hid.json").read_text())
    data["guest_s"] = result.duration_s
    print(
        f"hidraw guest run: {result.duration_s:.1f} s; "
        f"contour {data['contour'].get('scenario_s')} s, taidoc {data['taidoc'].get('scenario_s')} s"
    )
    return data


def scenario(guest: dict[str, Any], name: str) -> dict[str, Any]:
    data = guest[name]
    assert "failed" not in data, data.get("failed")
    return data


def test_a_contour_meter_is_found_by_its_ids_and_downloaded_through_hidraw(guest) -> None:
    contour = scenario(guest, "contour")
    first = contour["first"]
    assert first["node"].startswith("/dev/hidraw") and (first["node"], "1a79:7410") in map(tuple, first["hidraw"])
    assert first["states"] == ["done"]
    readings = contour["readings"][: contour["after_first"]]
    assert [r["values"]["glucose"]["value"] for r in readings] == [90, 97, 104, 111, 118, 125]
    assert {r["values"]["glucose"]["unit"] for r in readings} == {"mg/dL"}
    assert {r["kind"] for r in readings} == {"glucose"}
    assert {r["device"]["uid"] for r in readings} == {"usb:1a79:7410:7390-1163170"}
    assert {r["device"]["profile"] for r in readings} == {"serial.astm"}
    device_times = [datetime.fromisoformat(r["device_time"]) for r in readings]
    assert device_times == [GLUCOSE_BASE + timedelta(hours=6 * i) for i in range(6)]
    # The meter's clock runs 47 minutes slow: each measured_at is its device time corrected by that.
    for reading in readings:
        assert reading["clock"]["judgement"] == "corrected"
        assert abs(reading["clock"]["offset_s"] - contour["meter_offset_s"]) < 60


def test_a_second_contour_download_through_hidraw_adds_the_same_reading_ids(guest) -> None:
    contour = scenario(guest, "contour")
    first = contour["readings"][: contour["after_first"]]
    second = contour["readings"][contour["after_first"] : 2 * contour["after_first"]]
    assert contour["second"]["states"] == ["done"]
    assert [r["id"] for r in second] == [r["id"] for r in first]


def test_a_contour_meter_unplugged_mid_upload_keeps_its_acked_results_and_gives_the_rest_on_replug(guest) -> None:
    contour = scenario(guest, "contour")
    assert contour["cut"]["states"][-1] == "unplugged"
    others = contour["readings"][2 * contour["after_first"] :]
    cut = others[: contour["after_cut"] - 2 * contour["after_first"]]
    assert [r["values"]["glucose"]["value"] for r in cut] == [90, 97]
    assert {r["device"]["uid"] for r in others} == {"usb:1a79:7410:7390-2222222"}
    assert sorted({r["values"]["glucose"]["value"] for r in others}) == [90, 97, 104, 111, 118]
    assert len({r["id"] for r in others}) == 5, "the replug read the same results again under the same ids"


def test_a_cp2110_taidoc_meter_is_read_through_hidraw_after_the_uart_is_set_to_19200_8n1(guest) -> None:
    taidoc = scenario(guest, "taidoc")
    assert (taidoc["first"]["node"], "10c4:ea80") in map(tuple, taidoc["first"]["hidraw"])
    assert taidoc["bridges"][0] == {"enabled": True, "purges": 1, "configs": [[19200, 0, 3, 0, 0]]}
    readings = taidoc["readings"][: taidoc["after_first"]]
    records = taidoc["records"][:3]
    assert [r["values"]["systolic"]["value"] for r in readings] == [r["systolic"] for r in records]
    assert [r["values"]["diastolic"]["value"] for r in readings] == [r["diastolic"] for r in records]
    assert [r["values"]["pulse_rate"]["value"] for r in readings] == [r["pulse"] for r in records]
    assert {r["values"]["systolic"]["unit"] for r in readings} == {"mm[Hg]"}
    assert [r["device_time"] for r in readings] == [r["when"] for r in records]
    assert {r["device"]["uid"] for r in readings} == {"usb:10c4:ea80:3128A0B1C2D3E4F5"}
    assert {r["kind"] for r in readings} == {"blood_pressure"}


def test_a_cp2110_taidoc_meter_unplugged_mid_download_resumes_without_gap_or_double(guest) -> None:
    taidoc = scenario(guest, "taidoc")
    assert taidoc["cut"]["states"][-1] == "unplugged"
    assert taidoc["resumed"]["states"] == ["done"]
    systolics = [r["values"]["systolic"]["value"] for r in taidoc["readings"]]
    assert systolics == [r["systolic"] for r in taidoc["records"]], "each record once, oldest first"
    assert len({r["id"] for r in taidoc["readings"]}) == len(taidoc["records"]) == 5
