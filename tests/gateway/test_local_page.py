"""The gateway's local page (issue 19), served by a real running Gateway (outbox, uplink to the real
broker, simulated BLE radio): hostile requests get clear 4xx and never hurt the gateway; in headless
Chromium on a phone-sized screen a person signs in with the claim code, opens the pairing window,
confirms their cuff (it becomes a device, its readings flow) and leaves the neighbour's scale alone.
Screenshots: tests/artifacts/local_page_*.png."""

from __future__ import annotations

import asyncio
import http.client
import socket
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from firmware_sims.ble.air import AIR
from firmware_sims.ble.peripherals import BloodPressureCuff, BpRecord, WeightScale
from gateway.config import parse_config
from gateway.provisioning.identity import load_or_create_identity
from gateway.runtime import Gateway
from tests.chromium import launched_chromium
from tests.gateway.ble_support import empty_air  # noqa: F401 (empty_air is an autouse fixture)
from tests.waiting import wait_until

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class RunningGateway:
    """A Gateway on its own event loop thread, as in ``rpm-gateway run``; the tests speak HTTP to it."""

    def __init__(self, config: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.gateway = Gateway(config)
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(30)
        self.port = config.local_page.port
        self.code = load_or_create_identity(config.data_dir).claim_code

    def call(self, work: Any) -> Any:
        async def run() -> Any:
            return work()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def running(tmp_path: Path, mqtt_broker: Any, unique_id: str) -> Iterator[RunningGateway]:
    now = datetime.now().replace(microsecond=0)
    AIR.add(BloodPressureCuff("C0:FF:EE:19:00:01", [BpRecord(128, 82, 97, now - timedelta(minutes=30))],
                              name="Omron-like cuff", rssi=-48),
            WeightScale("C0:FF:EE:19:00:02", name="Next door scale", rssi=-91))
    config = parse_config({
        "gateway_id": unique_id, "data_dir": str(tmp_path / "data"), "timezone": "UTC",
        "mqtt": {"url": mqtt_broker.url, "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "drain_timeout_s": 0.5},
        "ble": {"backend": "sim", "op_timeout_s": 1.0, "idle_timeout_s": 0.2, "connect_timeout_s": 1.0},
        "usb": {"enabled": False},
        "local_page": {"enabled": True, "bind": "127.0.0.1", "port": free_port(),
                       "button_file": str(tmp_path / "button"), "pairing_window_s": 60},
    })
    gateway = RunningGateway(config)
    try:
        yield gateway
    finally:
        gateway.close()


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Host": f"127.0.0.1:{port}", **(headers or {})})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
    finally:
        conn.close()


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def sign_in(port: int, code: str) -> tuple[str, str]:
    status, headers, _ = request(port, "POST", "/sign-in", f"code={code}".encode(), FORM)
    assert status == 303, status
    cookie = headers["set-cookie"].split(";")[0]
    assert "HttpOnly" in headers["set-cookie"] and "SameSite=Strict" in headers["set-cookie"]
    _, _, page = request(port, "GET", "/", headers={"Cookie": cookie})
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    return cookie, csrf


def test_hostile_requests_get_clear_4xx_and_the_gateway_carries_on(running: RunningGateway, tmp_path: Path) -> None:
    port = running.port
    status, headers, page = request(port, "GET", "/")
    assert status == 200 and "Code printed on the gateway" in page
    assert "default-src 'none'" in headers["content-security-policy"] and "script-src" not in \
        headers["content-security-policy"]
    assert request(port, "POST", "/confirm", b"uid=ble:C0:FF:EE:19:00:02", FORM)[0] == 401
    assert request(port, "POST", "/confirm", b"uid=x", {**FORM, "Cookie": "rpm_local=forged"})[0] == 401
    assert request(port, "POST", "/sign-in", b"x" * 10, {"Content-Type": "text/plain"})[0] == 415
    assert request(port, "POST", "/sign-in", None, {**FORM, "Content-Length": "100000"})[0] == 413
    assert request(port, "PUT", "/")[0] == 405
    assert request(port, "GET", "/../etc/passwd")[0] == 404
    assert request(port, "GET", "/", headers={"Host": "evil.example.com"})[0] == 421
    # A wrong code is refused, and after a few the client waits (60 random bits make guessing hopeless anyway).
    codes = [request(port, "POST", "/sign-in", b"code=AAAA-BBBB-CCCC", FORM)[0] for _ in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    status, headers, _ = request(port, "POST", "/sign-in", f"code={running.code}".encode(), FORM)
    assert status == 429 and int(headers["retry-after"]) > 0  # the limit holds for the right code too
    # The button: a press lets the next visit in, once.
    (tmp_path / "button").touch()
    status, headers, _ = request(port, "GET", "/")
    assert status == 303 and headers["set-cookie"].startswith("rpm_local=")
    cookie = headers["set-cookie"].split(";")[0]
    assert request(port, "GET", "/")[0] == 200 and "set-cookie" not in request(port, "GET", "/")[1]
    page = request(port, "GET", "/", headers={"Cookie": cookie})[2]
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    assert request(port, "POST", "/pairing", b"csrf=wrong", {**FORM, "Cookie": cookie})[0] == 403
    assert request(port, "POST", "/pairing", f"csrf={csrf}".encode(),
                   {**FORM, "Cookie": cookie, "Origin": "http://evil.example.com"})[0] == 403
    assert request(port, "POST", "/pairing", f"csrf={csrf}".encode(), {**FORM, "Cookie": cookie})[0] == 303
    assert running.call(lambda: running.gateway.devices.window_remaining_s()) > 0
    assert request(port, "POST", "/confirm", f"csrf={csrf}&uid=ble:00:00:00:00:00:00".encode(),
                   {**FORM, "Cookie": cookie})[1]["location"] == "/?done=gone"
    # "²" is a digit to str.isdigit but not to int(): a 400, not a 500.
    assert request(port, "POST", "/confirm", f"csrf={csrf}&uid=ble:C0:FF:EE:19:00:01&user=%C2%B2".encode(),
                   {**FORM, "Cookie": cookie})[0] == 400
    assert request(port, "GET", "/", headers={"Cookie": cookie})[0] == 200  # still serving


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_chromium()


def test_on_a_phone_a_person_confirms_their_cuff_and_not_the_neighbours_scale(running: RunningGateway,
                                                                              browser: Any) -> None:
    from playwright.sync_api import expect

    ARTIFACTS.mkdir(exist_ok=True)
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True)
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.goto(f"http://127.0.0.1:{running.port}/")
    tab.screenshot(path=str(ARTIFACTS / "local_page_sign_in.png"), full_page=True)
    tab.fill("#code", running.code.lower().replace("-", ""))  # as a person types it
    tab.click("button:has-text(\"Sign in\")")
    expect(tab.locator("#state h2")).to_have_text("Connected")
    expect(tab.locator("#devices")).to_contain_text("No device confirmed yet")
    tab.click("button:has-text(\"Look for new devices\")")
    expect(tab.locator(".looking")).to_contain_text("Looking for new devices")
    wait_until(lambda: len(running.call(running.gateway.devices.candidates)) == 2, 10, "two candidates heard")
    tab.reload()
    cuff = tab.locator('li.candidate[data-uid="ble:C0:FF:EE:19:00:01"]')
    expect(cuff).to_contain_text("Blood pressure monitor")
    expect(tab.locator('li.candidate[data-uid="ble:C0:FF:EE:19:00:02"]')).to_contain_text("may be a neighbour's")
    tab.screenshot(path=str(ARTIFACTS / "local_page_candidates.png"), full_page=True)
    cuff.locator("button:has-text(\"Yes, mine\")").click()
    expect(tab.locator(".notice")).to_contain_text("Device confirmed")
    device = tab.locator('li.device[data-uid="ble:C0:FF:EE:19:00:01"]')
    expect(device).to_contain_text("Blood pressure monitor — Omron-like cuff")
    wait_until(lambda: running.gateway.outbox.stats().depth + running.call(
        lambda: sum(1 for d in running.gateway.status().devices if d.battery is not None)) > 0, 10, "cuff read")
    tab.reload()
    expect(device).to_contain_text("Battery 87 %")
    expect(tab.locator('li.candidate[data-uid="ble:C0:FF:EE:19:00:02"]')).to_be_visible()
    tab.screenshot(path=str(ARTIFACTS / "local_page_confirmed.png"), full_page=True)
    status = running.call(running.gateway.status)
    assert [c.uid for c in status.candidates] == ["ble:C0:FF:EE:19:00:02"]
    assert "ble:C0:FF:EE:19:00:02" not in {d.uid for d in status.devices}
    context.close()


@pytest.mark.unit
def test_the_page_is_off_by_default_and_not_on_every_interface() -> None:
    assert parse_config({}).local_page.enabled is False and parse_config({}).local_page.bind == "lan"
