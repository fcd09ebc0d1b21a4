"""The runtime: the sink commits before it returns, status on the retained topic, one component
failing does not stop the others, device managers wired with the sink, and ``rpm-gateway run``
exiting cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import types
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.config import GatewayConfig, parse_config
from gateway.drivers.base import ClockCheck
from gateway.runtime import Gateway
from tests.gateway.mqtt_acker import TestAcker
from tests.gateway.reading_factory import bp_measurement, bp_reading, cuff
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def gateway_config(tmp_path: Path, url: str, gateway_id: str, **extra: Any) -> GatewayConfig:
    data: dict[str, Any] = {
        "gateway_id": gateway_id,
        "data_dir": str(tmp_path / "data"),
        "timezone": "UTC",
        "status_interval_s": 30,
        "mqtt": {"url": url, "keepalive_s": 5, "batch_ms": 20, "ack_timeout_s": 5, "reconnect_min_s": 0.1,
                 "reconnect_max_s": 0.5, "drain_timeout_s": 2},
        "ble": {"enabled": False},
        "usb": {"enabled": False},
    }
    data.update(extra)
    return parse_config(data)


@contextlib.asynccontextmanager
async def started(gateway: Gateway) -> AsyncIterator[Gateway]:
    await gateway.start()
    try:
        yield gateway
    finally:
        await gateway.stop()


@pytest.fixture
def acker(mqtt_broker, unique_id: str):  # type: ignore[no-untyped-def]
    ack = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    yield ack
    ack.close()


def test_the_sink_returns_only_once_the_reading_is_on_disk(tmp_path, mqtt_broker, acker, unique_id) -> None:
    acker.acking = False
    config = gateway_config(tmp_path, mqtt_broker.url, unique_id)

    async def scenario() -> None:
        async with started(Gateway(config, start_devices=False)) as gateway:
            await gateway.sink(cuff(), bp_measurement(5), None)
            # Another connection (what a fresh process would see after a power cut) finds it.
            with contextlib.closing(sqlite3.connect(config.data_dir / "outbox.sqlite")) as db:
                assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 1
            await eventually(lambda: len(acker.ids()) == 1, 10, "reading sent")
            acker.acking = True
            acker.release_held_acks()
            await eventually(lambda: gateway.status().outbox_depth == 0, 10, "acked")

    asyncio.run(scenario())
    assert acker.ids() == {bp_reading(5).id}


def test_status_shows_devices_outbox_depth_and_age_and_is_published_retained(
        tmp_path, mqtt_broker, acker, unique_id) -> None:
    acker.acking = False
    config = gateway_config(tmp_path, mqtt_broker.url, unique_id)

    async def scenario() -> None:
        async with started(Gateway(config, start_devices=False)) as gateway:
            clock = ClockCheck(gateway_now=datetime.now(UTC), device_now=datetime.now(UTC).replace(tzinfo=None))
            await gateway.sink(cuff("ble:AA:BB"), bp_measurement(1), clock)
            gateway.board.device_update("ble:AA:BB", battery=64)
            gateway.board.device_update("usb:0403:6001:X1", profile="serial.taidoc", error="checksum mismatch")
            gateway.board.device_update("ble:AA:BB", battery=900)  # a driver bug must not break the status
            await asyncio.sleep(0.3)
            status = gateway.status()
            assert status.online and status.gateway_id == unique_id and status.version
            assert status.outbox_depth == 1 and status.outbox_oldest_age_s is not None
            devices = {d.uid: d for d in status.devices}
            assert devices["ble:AA:BB"].battery == 64 and devices["ble:AA:BB"].last_seen is not None
            assert devices["ble:AA:BB"].profile == "ble.blood_pressure"
            assert devices["ble:AA:BB"].clock_offset_s is not None
            assert devices["usb:0403:6001:X1"].error == "checksum mismatch"

            def published_with_devices() -> bool:
                last = acker.last_status() or {}
                return len(last.get("devices", [])) == 2 and last.get("outbox_depth") == 1

            await eventually(published_with_devices, 5, "status published on change")

    asyncio.run(scenario())
    assert acker.last_status()["online"] is False  # the goodbye on stop
    # Retained: a late subscriber (the cloud restarting) still gets it.
    late = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    try:
        assert late.wait_for(lambda: late.last_status() is not None, 5)
        assert late.last_status()["gateway_id"] == unique_id
    finally:
        late.close()


def test_a_failing_component_does_not_stop_the_others(tmp_path, mqtt_broker, acker, unique_id) -> None:
    config = gateway_config(tmp_path, mqtt_broker.url, unique_id)
    calls = 0

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("adapter vanished")

    async def scenario() -> None:
        async with started(Gateway(config, start_devices=False)) as gateway:
            gateway._core_tasks.append(gateway._spawn("broken", broken))
            await eventually(lambda: calls >= 2, 5, "broken component restarted")
            for i in range(10):
                await gateway.submit(bp_reading(i))
            await eventually(lambda: gateway.status().outbox_depth == 0, 10, "readings still flow")
            assert gateway.component_errors["broken"] == "RuntimeError: adapter vanished"

    asyncio.run(scenario())
    assert len(acker.ids()) == 10


def test_device_managers_get_the_sink_and_report_status(tmp_path, mqtt_broker, acker, unique_id, monkeypatch) -> None:
    """The managers are other modules; this stands in for the USB one to check the wiring: the
    constructor contract, a measurement through the sink to the cloud, on_status into the status."""
    made: dict[str, Any] = {}

    class StandInUsbManager:
        def __init__(self, config, sink, state, *, on_status=None, local_tz=None,  # type: ignore[no-untyped-def]
                     load_driver=None, enrolment=None) -> None:
            made.update(config=config, state=state, local_tz=local_tz)
            self.sink, self.on_status = sink, on_status

        async def run(self) -> None:
            await self.sink(cuff("usb:0403:6001:S1"), bp_measurement(9), None)
            self.on_status("usb:0403:6001:S1", profile="serial.taidoc", battery=80)
            await asyncio.Event().wait()

    monkeypatch.setitem(sys.modules, "gateway.discovery.usb", types.SimpleNamespace(UsbManager=StandInUsbManager))
    config = gateway_config(tmp_path, mqtt_broker.url, unique_id, usb={"enabled": True})

    async def scenario() -> None:
        async with started(Gateway(config)) as gateway:
            await eventually(lambda: gateway.status().outbox_depth == 0 and acker.ids(), 10, "delivered")
            assert [d.battery for d in gateway.status().devices] == [80]
            assert made["state"] is gateway.device_state and str(made["local_tz"]) == "UTC"

    asyncio.run(scenario())
    assert acker.ids() == {bp_reading(9, uid="usb:0403:6001:S1").id}


def test_rpm_gateway_run_drains_and_exits_0_on_sigterm(tmp_path, mqtt_broker, acker, unique_id) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
gateway_id = "{unique_id}"
data_dir = "{tmp_path / 'data'}"
[mqtt]
url = "{mqtt_broker.url}"
reconnect_min_s = 0.1
[ble]
enabled = false
[usb]
enabled = false
[log]
json = true
""")
    process = subprocess.Popen([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                               stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert acker.wait_for(lambda: (acker.last_status() or {}).get("online") is True, 15), "never online"
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0
    finally:
        if process.poll() is None:
            process.kill()
    logs = [json.loads(line) for line in process.stderr.read().splitlines() if line.startswith("{")]
    assert any("signal received" in entry["msg"] for entry in logs)
    assert acker.wait_for(lambda: (acker.last_status() or {}).get("online") is False, 5)


def test_rpm_gateway_run_with_a_bad_config_exits_2_naming_the_key(tmp_path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[mqtt]\nbatch_max = 0\n")
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "mqtt.batch_max" in result.stderr


def test_enrolled_devices_show_in_the_status_before_they_are_seen(tmp_path, mqtt_broker, unique_id) -> None:
    config = gateway_config(tmp_path, mqtt_broker.url, unique_id, ble={
        "enabled": True, "backend": "sim", "enrolled": [{"address": "c0:ff:ee:00:00:01", "profile": "ble.glucose"}]})

    async def scenario() -> None:
        async with started(Gateway(config)) as gateway:
            devices = gateway.status().devices
            assert [(d.uid, d.profile, d.last_seen) for d in devices] == [("ble:C0:FF:EE:00:00:01", "ble.glucose",
                                                                           None)]

    asyncio.run(scenario())


def test_refused_credentials_show_in_the_status_and_metrics(tmp_path, unique_id) -> None:
    import httpx

    from cloud.embedded import free_port
    from tests.gateway.private_broker import PrivateMosquitto

    broker = PrivateMosquitto(tmp_path, users={unique_id: "right"}).start()
    port = free_port()
    config = gateway_config(tmp_path, broker.url, unique_id, metrics_port=port,
                            mqtt={"url": broker.url, "username": unique_id, "password": "wrong",
                                  "reconnect_min_s": 0.1, "reconnect_max_s": 0.5})

    async def scenario() -> None:
        async with started(Gateway(config, start_devices=False)) as gateway:
            await gateway.submit(bp_reading(1))
            await eventually(lambda: gateway.status().uplink_error is not None, 10, "uplink error in the status")
            assert "refused the credentials" in gateway.status().uplink_error
            body = await asyncio.to_thread(lambda: httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
            assert "rpm_gateway_outbox_depth 1.0" in body
            assert "rpm_gateway_uplink_connected 0.0" in body
            assert "rpm_gateway_batches_resent_total 0.0" in body

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_json_logs_carry_level_logger_message_and_extra_fields() -> None:
    import io
    import logging

    from gateway.config import LogConfig
    from gateway.ops.logging_setup import configure_logging

    stream = io.StringIO()
    old_level = logging.getLogger().level
    configure_logging(LogConfig(json=True, level="INFO"), stream=stream)
    try:
        logging.getLogger("gateway.test").warning("outbox at %d%%", 95, extra={"outbox_depth": 950})
        entry = json.loads(stream.getvalue().splitlines()[-1])
        assert entry["level"] == "warning" and entry["logger"] == "gateway.test"
        assert entry["msg"] == "outbox at 95%" and entry["outbox_depth"] == 950 and entry["ts"].endswith("Z")
    finally:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if getattr(h, "_rpm_gateway", False)]:
            root.removeHandler(handler)
        root.setLevel(old_level)
