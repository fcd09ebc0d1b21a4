"""Issue 19, item 2, through the whole gateway: what leaves it over MQTT.

The real runtime (``gateway.runtime.Gateway``: enrolment store, USB manager, intake, outbox, uplink) with
two ``[[usb.devices]]`` sockets that ask for confirmation, a real broker, and a test-side cloud that acks
and keeps every reading it receives. The meter is confirmed under its socket's uid (its serial unknown
then) and moved to the other socket; a second meter is put in the first socket, proposed under its own
serial, ignored, and plugged in again. Every reading the broker carries is the confirmed meter's, under
the uid it was confirmed under; none of the ignored meter's ever leaves, and it never shows in the status.
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from firmware_sims.serial.astm_meter import GlucoseMeter, GlucoseResult, PtyAstmMeter
from gateway.runtime import Gateway
from tests.gateway.mqtt_acker import TestAcker
from tests.gateway.test_runtime import gateway_config, started
from tests.waiting import eventually

pytestmark = pytest.mark.integration

EOT = b"\x04"


class RecordingCloud(TestAcker):
    """The test acker, also keeping each reading as it arrived (device uid, serial, values)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.readings: list[dict[str, Any]] = []
        super().__init__(*args, **kwargs)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(message.payload)
        except ValueError:
            data = {}
        if isinstance(data, dict) and "readings" in data:
            with self._lock:
                self.readings.extend(data["readings"])
        super()._on_message(client, userdata, message)

    def uids(self) -> set[str]:
        with self._lock:
            return {r["device"]["uid"] for r in self.readings}

    def values(self) -> set[float]:
        with self._lock:
            return {r["values"]["glucose"]["value"] for r in self.readings}


def test_only_the_confirmed_meter_reaches_the_broker_under_its_confirmed_uid_on_either_socket(
        tmp_path: Path, mqtt_broker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    front, back = str(tmp_path / "ttyFront"), str(tmp_path / "ttyBack")
    base = datetime.now().replace(second=0, microsecond=0) - timedelta(days=1)
    mine = GlucoseMeter(results=[GlucoseResult(base, 105), GlucoseResult(base + timedelta(hours=1), 106)],
                        serial="7390-1000001")
    neighbours = GlucoseMeter(results=[GlucoseResult(base, 205), GlucoseResult(base + timedelta(hours=2), 206)],
                              serial="7390-1000002")
    cables = {name: PtyAstmMeter(m, link_path=path) for name, m, path in
              (("mine-front", mine, front), ("mine-back", mine, back), ("other-front", neighbours, front))}
    socket = {"profile": "serial.astm", "needs_confirmation": True}
    config = gateway_config(tmp_path, mqtt_broker.url, unique_id, usb={
        "enabled": True, "poll_interval_s": 0.05, "devices": [{**socket, "port": front}, {**socket, "port": back}]})
    confirmed_uid, others_uid = f"usb:0000:0000:{front}", "usb:0000:0000:7390-1000002"
    cloud = RecordingCloud(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)

    async def scenario() -> None:
        async with started(Gateway(config)) as gateway:
            store = gateway.devices
            assert store is not None
            cables["mine-front"].plug_in()
            await eventually(lambda: [c.uid for c in store.candidates()] == [confirmed_uid], 10, "the meter proposed")
            gateway.confirm_candidate(confirmed_uid)
            await eventually(lambda: cloud.values() == {105, 106}, 15, "its readings at the broker")
            cables["mine-front"].pull_cable()

            # Another meter of the same model in the confirmed socket: a candidate of its own, not read.
            cables["other-front"].plug_in()
            await eventually(lambda: [c.uid for c in store.candidates()] == [others_uid], 10, "the other proposed")
            gateway.ignore_candidate(others_uid)

            # The confirmed meter in the other socket, with a new result: read under the uid it was confirmed under.
            mine.results.append(GlucoseResult(base + timedelta(hours=3), 107))
            cables["mine-back"].plug_in()
            await eventually(lambda: cloud.values() == {105, 106, 107}, 15, "the moved meter's new reading")

            # The ignored one, plugged in again: stopped after its header, nothing taken.
            cables["other-front"].pull_cable()
            cables["other-front"].plug_in()
            await eventually(lambda: cables["other-front"].sent.endswith(EOT), 10, "the ignored meter stopped")
            await eventually(lambda: gateway.status().outbox_depth == 0, 10, "everything sent acked")
            await asyncio.sleep(0.5)  # anything it could still send would be in flight by now
            status = gateway.status()
            assert {d.uid for d in status.devices} == {confirmed_uid}
            assert status.candidates == []
            assert b"R|" not in cables["other-front"].sent

    try:
        asyncio.run(scenario())
    finally:
        for cable in cables.values():
            if cable.plugged_in:
                cable.pull_cable()
        cloud.close()
    assert cloud.uids() == {confirmed_uid}
    assert cloud.values() == {105, 106, 107}
    assert {r["device"]["serial"] for r in cloud.readings} == {"7390-1000001"}
