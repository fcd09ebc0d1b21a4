"""The uplink against a real broker: batches, acks, re-sends, persistent sessions, 3.1.1 fallback,
refused credentials, an unreachable broker, the last will."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from gateway.config import MqttConfig
from gateway.store.outbox import Outbox
from gateway.store.uplink import Uplink, parse_broker_url
from tests.gateway.mqtt_acker import TestAcker
from tests.gateway.private_broker import PrivateMosquitto
from tests.gateway.reading_factory import bp_reading
from tests.gateway.tcp_proxy import CuttableLink
from tests.strict_broker import StrictBroker
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def fast_config(url: str, **overrides: object) -> MqttConfig:
    values: dict[str, object] = dict(url=url, keepalive_s=5, batch_max=100, batch_ms=50, ack_timeout_s=10,
                                     reconnect_min_s=0.1, reconnect_max_s=0.5)
    values.update(overrides)
    return MqttConfig(**values)


@contextlib.asynccontextmanager
async def running(uplink: Uplink) -> AsyncIterator[Uplink]:
    task = asyncio.create_task(uplink.run())
    try:
        yield uplink
    finally:
        await uplink.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


@pytest.fixture
def acker(mqtt_broker, unique_id: str):  # type: ignore[no-untyped-def]
    ack = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5)
    yield ack
    ack.close()


def test_broker_url_parsing_names_tls_and_default_ports() -> None:
    assert parse_broker_url("mqtts://broker.example:8884").tls
    assert parse_broker_url("mqtts://broker.example").port == 8883
    plain = parse_broker_url("mqtt://gw:s%40cret@10.0.0.1")
    assert (plain.port, plain.username, plain.password, plain.tls) == (1883, "gw", "s@cret", False)
    with pytest.raises(Exception, match=r"mqtt\.url"):
        parse_broker_url("http://nope")


def test_every_reading_arrives_and_leaves_the_outbox_only_on_ack(mqtt_broker, acker, outbox, unique_id) -> None:
    async def scenario() -> None:
        outbox.put_many(bp_reading(i) for i in range(250))
        uplink = Uplink(fast_config(mqtt_broker.url), unique_id, outbox)
        async with running(uplink):
            await eventually(lambda: outbox.depth() == 0, 10, "outbox drained")
            for i in range(250, 260):  # live readings after the backlog
                outbox.put(bp_reading(i))
                uplink.notify()
            await eventually(lambda: outbox.depth() == 0, 10, "live readings acked")
            assert uplink.state.readings_acked == 260

    asyncio.run(scenario())
    assert acker.ids() == {bp_reading(i).id for i in range(260)}
    assert max(acker.seen.values()) == 1


def test_batches_hold_at_most_batch_max_and_a_lone_reading_waits_only_batch_ms(
        mqtt_broker, acker, outbox, unique_id) -> None:
    async def scenario() -> float:
        outbox.put_many(bp_reading(i) for i in range(95))
        uplink = Uplink(fast_config(mqtt_broker.url, batch_max=40, batch_ms=300), unique_id, outbox)
        async with running(uplink):
            await eventually(lambda: outbox.depth() == 0, 10, "backlog drained")
            assert acker.batches == 3  # 40 + 40 + 15 (the last after its linger)
            start = time.monotonic()
            outbox.put(bp_reading(500))
            uplink.notify()
            await eventually(lambda: outbox.depth() == 0, 5, "lone reading acked")
            return time.monotonic() - start

    elapsed = asyncio.run(scenario())
    assert 0.25 <= elapsed < 2.0, elapsed


def test_rejected_readings_are_quarantined_not_retried(mqtt_broker, outbox, unique_id) -> None:
    bad = {bp_reading(3).id}
    acker = TestAcker(mqtt_broker.host, mqtt_broker.port, unique_id, v5=mqtt_broker.supports_v5,
                      reject=lambda r: "device not registered" if r["id"] in bad else None)

    async def scenario() -> None:
        outbox.put_many(bp_reading(i) for i in range(10))
        uplink = Uplink(fast_config(mqtt_broker.url, ack_timeout_s=0.5), unique_id, outbox)
        async with running(uplink):
            await eventually(lambda: outbox.depth() == 0, 10, "outbox drained")
            await asyncio.sleep(1.0)  # longer than the ack timeout: nothing may come back to be sent

    try:
        asyncio.run(scenario())
        assert [(q.id, q.reason) for q in outbox.quarantined()] == [(bp_reading(3).id, "device not registered")]
        assert acker.seen[bp_reading(3).id] == 1
    finally:
        acker.close()


def test_a_batch_not_acked_in_time_is_sent_again(mqtt_broker, acker, outbox, unique_id) -> None:
    acker.acking = False

    async def scenario() -> None:
        outbox.put_many(bp_reading(i) for i in range(20))
        uplink = Uplink(fast_config(mqtt_broker.url, ack_timeout_s=0.5), unique_id, outbox)
        async with running(uplink):
            await eventually(lambda: len(acker.ids()) == 20, 10, "first delivery")
            assert outbox.depth() == 20  # a broker PUBACK is not an ack: everything stays
            await eventually(lambda: min(acker.seen.values()) >= 2, 10, "re-sent after the ack timeout")
            assert uplink.state.batches_resent >= 1
            acker.acking = True
            await eventually(lambda: outbox.depth() == 0, 10, "drained once acks come")

    asyncio.run(scenario())


def test_a_backlog_batch_the_broker_took_waits_for_the_queued_ack_timeout(
        tmp_path: Path, mqtt_broker, acker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    stored_at: list[float | None] = [time.time() - 3600]
    box = Outbox(tmp_path / "backlog.sqlite", clock=lambda: stored_at[0] or time.time())
    box.put_many(bp_reading(i) for i in range(20))  # an hour old: a backlog
    stored_at[0] = None
    acker.acking = False

    async def scenario() -> None:
        uplink = Uplink(fast_config(mqtt_broker.url, ack_timeout_s=0.3, queued_ack_timeout_s=1.5), unique_id, box)
        async with running(uplink):
            await eventually(lambda: len(acker.ids()) == 20, 10, "first delivery")
            await asyncio.sleep(0.8)  # past ack_timeout_s: queued behind the fleet's backlog, no copy yet
            assert max(acker.seen.values()) == 1
            await eventually(lambda: min(acker.seen.values()) >= 2, 10, "re-sent after the queued ack timeout")
            acker.acking = True
            await eventually(lambda: box.depth() == 0, 10, "drained once acks come")

    try:
        asyncio.run(scenario())
    finally:
        box.close()


def test_a_batch_the_broker_never_took_is_sent_again_after_the_ack_timeout(outbox, unique_id) -> None:
    broker = StrictBroker(receive_maximum=100)  # never sends a PUBACK

    async def scenario() -> None:
        outbox.put_many(bp_reading(i) for i in range(5))
        uplink = Uplink(fast_config(broker.url, ack_timeout_s=0.4, queued_ack_timeout_s=600), unique_id, outbox)
        async with running(uplink):
            await eventually(lambda: broker.received >= 1, 10, "first delivery")
            await eventually(lambda: broker.received >= 2, 5, "sent again after the ack timeout")

    try:
        asyncio.run(scenario())
    finally:
        broker.close()


def test_while_a_backlog_drains_the_newest_reading_travels_alone_and_the_backlog_waits(
        tmp_path: Path, mqtt_broker, acker, unique_id: str) -> None:  # type: ignore[no-untyped-def]
    stored_at: list[float | None] = [time.time() - 3600]
    box = Outbox(tmp_path / "backlog.sqlite", clock=lambda: stored_at[0] or time.time())
    box.put_many(bp_reading(i) for i in range(300))  # stored an hour ago, while the cloud was away
    stored_at[0] = None
    acker.acking = False
    fresh = bp_reading(1000)

    async def scenario() -> None:
        uplink = Uplink(fast_config(mqtt_broker.url, batch_max=50, backlog_in_flight=2, ack_timeout_s=60), unique_id,
                        box)
        async with running(uplink):
            await eventually(lambda: len(acker.ids()) == 100, 10, "two backlog batches")
            await asyncio.sleep(0.5)
            assert len(acker.ids()) == 100, "more backlog in flight than backlog_in_flight"
            box.put(fresh)
            uplink.notify()
            await eventually(lambda: fresh.id in acker.ids(), 5, "the fresh reading sent")
            assert acker.messages[-1] == [fresh.id]  # alone: small, so ingest takes it before the backlog
            acker.acking = True
            acker.release_held_acks()
            await eventually(lambda: box.depth() == 0, 20, "backlog drained")
            assert max(acker.seen.values()) == 1 and uplink.state.batches_resent == 0

    try:
        asyncio.run(scenario())
    finally:
        box.close()


def test_never_more_batches_in_flight_than_the_brokers_receive_maximum(outbox, unique_id) -> None:
    """MQTT 5 §3.3.4: a strict broker disconnects a client over its Receive Maximum; paho does not cap."""
    broker = StrictBroker(receive_maximum=3)

    async def scenario() -> None:
        outbox.put_many(bp_reading(i) for i in range(20))
        uplink = Uplink(fast_config(broker.url, batch_max=1, batch_ms=5), unique_id, outbox)
        async with running(uplink):
            await eventually(lambda: broker.received >= 3, 10, "the first batches")
            await asyncio.sleep(0.5)  # time for more to be sent, if the uplink were going to

    try:
        asyncio.run(scenario())
        assert broker.received == 3
        assert broker.violations == []
    finally:
        broker.close()


def test_acks_published_while_the_gateway_was_away_still_arrive(mqtt_broker, acker, outbox, unique_id) -> None:
    """The persistent session: the cloud acks while the home link is down; on reconnect the broker
    delivers those acks and nothing needs sending again."""
    if mqtt_broker.kind == "amqtt":
        pytest.skip("amqtt does not resume a 3.1.1 session (it answers session present = false)")
    link = CuttableLink(mqtt_broker.host, mqtt_broker.port)
    acker.acking = False

    async def scenario() -> None:
        outbox.put_many(bp_reading(i) for i in range(30))
        uplink = Uplink(fast_config(link.url, ack_timeout_s=60), unique_id, outbox)
        async with running(uplink):
            await eventually(lambda: len(acker.ids()) == 30, 10, "batch delivered")
            await eventually(lambda: uplink.state.in_flight_batches > 0 and all(
                f.puback for f in uplink._in_flight.values()), 5, "broker confirmed the batches")
            link.cut()
            await eventually(lambda: not uplink.state.connected, 10, "gateway noticed the cut")
            assert acker.release_held_acks() >= 1
            link.restore()
            await eventually(lambda: outbox.depth() == 0, 15, "acks delivered after reconnect")
            assert uplink.state.connects >= 2

    try:
        asyncio.run(scenario())
    finally:
        link.close()
    assert max(acker.seen.values()) == 1, "a reading was re-sent although its ack was waiting in the session"


def test_last_will_says_offline_when_the_link_dies(mqtt_broker, acker, outbox, unique_id) -> None:
    link = CuttableLink(mqtt_broker.host, mqtt_broker.port)

    async def scenario() -> None:
        uplink = Uplink(fast_config(link.url), unique_id, outbox,
                        will_payload=lambda: json.dumps({"gateway_id": unique_id, "online": False}))
        async with running(uplink):
            await uplink.wait_connected(10)
            uplink.publish_status(json.dumps({"gateway_id": unique_id, "online": True}))
            await eventually(lambda: (acker.last_status() or {}).get("online") is True, 5, "online status")
            link.cut()
            await eventually(lambda: (acker.last_status() or {}).get("online") is False, 10, "last will")

    try:
        asyncio.run(scenario())
    finally:
        link.close()


def test_falls_back_to_mqtt_311_on_a_broker_without_v5(tmp_path: Path, unique_id: str) -> None:
    from cloud.embedded import start_amqtt

    broker = start_amqtt()
    acker = TestAcker(broker.host, broker.port, unique_id, v5=False)
    box = Outbox(tmp_path / "o.sqlite")

    async def scenario() -> str | None:
        box.put_many(bp_reading(i) for i in range(20))
        uplink = Uplink(fast_config(broker.url), unique_id, box)
        async with running(uplink):
            await eventually(lambda: box.depth() == 0, 15, "delivered over 3.1.1")
            return uplink.state.protocol

    try:
        assert asyncio.run(scenario()) == "3.1.1"
        assert len(acker.ids()) == 20
    finally:
        acker.close()
        box.close()
        broker.stop()


def test_refused_credentials_are_a_clear_error_and_retried_with_backoff(
        tmp_path: Path, outbox: Outbox, unique_id: str, caplog: pytest.LogCaptureFixture) -> None:
    broker = PrivateMosquitto(tmp_path, users={unique_id: "right-password"}).start()

    async def scenario() -> None:
        wrong = Uplink(fast_config(broker.url, username=unique_id, password="wrong", reconnect_max_s=2), unique_id,
                       outbox)
        async with running(wrong):
            await eventually(lambda: len(_delays(caplog)) >= 4, 10, "several attempts")
            assert not wrong.state.connected
            assert wrong.error is not None and "refused the credentials" in wrong.error and unique_id in wrong.error
        right = Uplink(fast_config(broker.url, username=unique_id, password="right-password"), unique_id, outbox)
        async with running(right):
            assert await right.wait_connected(10)

    try:
        with caplog.at_level(logging.DEBUG, logger="gateway.store.uplink"):
            asyncio.run(scenario())
    finally:
        broker.stop()
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "refused the credentials" in r.getMessage()]
    assert len(errors) == 1, "said once in plain words, then retried quietly (debug)"
    retries = [r for r in caplog.records if "refused the credentials" in r.getMessage()]
    assert len(retries) >= 4 and all(r.levelno == logging.DEBUG for r in retries[1:])
    delays = _delays(caplog)
    # Doubling from 0.1 s with jitter in [0.5, 1]: the fourth wait is longer than the first could be.
    assert delays[3] > 0.1 >= delays[0]


def _delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    found = []
    for record in caplog.records:
        match = re.search(r"reconnecting to .* in ([0-9.]+) s", record.getMessage())
        if match:
            found.append(float(match.group(1)))
    return found


def test_readings_taken_while_the_broker_is_unreachable_all_arrive_when_it_is_back(
        tmp_path: Path, outbox: Outbox, unique_id: str) -> None:
    broker = PrivateMosquitto(tmp_path)  # configured, not started: the broker is down

    async def scenario() -> None:
        uplink = Uplink(fast_config(broker.url, ack_timeout_s=1.0), unique_id, outbox)
        async with running(uplink):
            for i in range(40):
                outbox.put(bp_reading(i))
                uplink.notify()
                await asyncio.sleep(0.01)
            await eventually(lambda: uplink.error is not None and "cannot reach" in uplink.error, 5, "error shown")
            assert outbox.depth() == 40
            broker.start()
            acker = TestAcker(broker.host, broker.port, unique_id)
            try:
                for i in range(40, 60):  # and the devices keep reading
                    outbox.put(bp_reading(i))
                    uplink.notify()
                await eventually(lambda: outbox.depth() == 0, 15, "all delivered after the broker came back")
                assert acker.ids() == {bp_reading(i).id for i in range(60)}
                assert uplink.error is None
            finally:
                acker.close()

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()


def test_tls_with_a_private_ca_and_a_client_certificate(tmp_path: Path, outbox: Outbox, unique_id: str) -> None:
    from tests.gateway.tls_material import make_tls_files

    files = make_tls_files(tmp_path, unique_id)
    broker = PrivateMosquitto(tmp_path, tls=(files.ca, files.server_cert, files.server_key),
                              require_client_cert=True).start()

    async def scenario() -> None:
        without_cert = Uplink(fast_config(broker.url, ca_file=files.ca), unique_id, outbox)
        async with running(without_cert):
            await eventually(lambda: without_cert.error is not None and "MQTT 5 and 3.1.1" in without_cert.error,
                             15, "a failure that does not blame the protocol")
            assert not without_cert.state.connected
        with_cert = Uplink(fast_config(broker.url, ca_file=files.ca, cert_file=files.client_cert,
                                       key_file=files.client_key), unique_id, outbox)
        async with running(with_cert):
            assert await with_cert.wait_connected(10), with_cert.error
            assert with_cert.state.protocol == "5"

    try:
        asyncio.run(scenario())
    finally:
        broker.stop()
