"""The one MQTT adapter (gateway/mqtt/): broker URLs, TLS choice, sessions per protocol, the v5 probe
against real brokers, the paho version gate, and the one backoff."""

from __future__ import annotations

from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from gateway.mqtt import paho_private
from gateway.mqtt.backoff import ExponentialBackoff
from gateway.mqtt.broker import BrokerAddress, BrokerUrlError, TlsOptions
from gateway.mqtt.client import (
    ClientOptions,
    apply_receive_maximum,
    broker_speaks_v5,
    create_client,
)


def test_broker_urls_name_host_port_tls_and_credentials() -> None:
    assert BrokerAddress.parse("mqtt://broker.example") == BrokerAddress("broker.example", 1883, False)
    assert BrokerAddress.parse("mqtts://broker.example") == BrokerAddress("broker.example", 8883, True)
    assert BrokerAddress.parse("ssl://10.0.0.2:8884") == BrokerAddress("10.0.0.2", 8884, True)
    assert BrokerAddress.parse("tcp://gw:s%40cret@10.0.0.1:1884") == BrokerAddress(
        "10.0.0.1", 1884, False, "gw", "s@cret"
    )


@pytest.mark.parametrize("url", ["http://broker.example", "mqtt://", "broker.example:1883", "mqtt://host:99999"])
def test_a_broker_url_that_cannot_work_is_refused_saying_what_was_expected(url: str) -> None:
    with pytest.raises(BrokerUrlError, match=r"mqtt://host\[:port\]|port of"):
        BrokerAddress.parse(url)


def test_a_ca_file_turns_tls_on_even_on_a_plain_url(tmp_path: Path) -> None:
    plain, tls = BrokerAddress.parse("mqtt://h"), BrokerAddress.parse("mqtts://h")
    assert not TlsOptions().wanted(plain)
    assert TlsOptions().wanted(tls)
    assert TlsOptions(ca_file=tmp_path / "ca.pem").wanted(plain)


def test_unusable_tls_files_are_a_setup_error_not_a_crash_later(tmp_path: Path) -> None:
    from gateway.mqtt.broker import TlsError

    missing = TlsOptions(ca_file=tmp_path / "no-such-ca.pem")
    with pytest.raises(TlsError, match="TLS files unusable"):
        create_client(BrokerAddress.parse("mqtts://h"), ClientOptions("c", tls=missing))


def test_url_credentials_apply_unless_the_options_name_a_user() -> None:
    address = BrokerAddress.parse("mqtt://gw-1:pw@h")
    assert create_client(address, ClientOptions("c")).username == "gw-1"
    assert create_client(address, ClientOptions("c", username="ingest", password="x")).username == "ingest"


def test_the_brokers_receive_maximum_caps_what_is_in_flight() -> None:
    client = create_client(BrokerAddress.parse("mqtt://h"), ClientOptions("c", max_in_flight=100))

    class Connack:
        ReceiveMaximum = 4

    assert apply_receive_maximum(client, 100, Connack()) == 4
    assert client.max_inflight_messages == 4
    assert apply_receive_maximum(client, 100, None) == 100  # 3.1.1: no properties, our own limit


def test_on_an_untested_paho_major_nothing_private_is_touched(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(paho_private, "TESTED", False)
    paho_private._warn_untested.cache_clear()
    try:
        assert paho_private.fast_client_class() is mqtt.Client
        fast = create_client(BrokerAddress.parse("mqtt://h"), ClientOptions("c", fast_path=True, max_in_flight=100))
        assert type(fast) is mqtt.Client
        paho_private.cap_in_flight(fast, 4)
        assert fast.max_inflight_messages == 100  # left at the limit set before connecting
        assert paho_private.network_thread_alive(fast)  # cannot tell: never reported dead
    finally:
        paho_private._warn_untested.cache_clear()
    assert any("is not the tested" in r.getMessage() for r in caplog.records)


def test_the_tested_paho_gets_the_fast_path() -> None:
    assert paho_private.TESTED, f"paho-mqtt {paho_private.PAHO_VERSION}: check gateway/mqtt/paho_private.py"
    fast = create_client(BrokerAddress.parse("mqtt://h"), ClientOptions("c", fast_path=True, manual_ack=True))
    assert isinstance(fast, paho_private.AckingClient)


@pytest.mark.integration
def test_the_probe_tells_a_v5_broker_from_an_unreachable_one(mqtt_broker) -> None:  # type: ignore[no-untyped-def]
    from cloud.embedded import free_port

    options = ClientOptions("adapter-test", keepalive_s=10)
    assert broker_speaks_v5(BrokerAddress.parse(mqtt_broker.url), options) is mqtt_broker.supports_v5
    assert broker_speaks_v5(BrokerAddress.parse(f"mqtt://127.0.0.1:{free_port()}"), options) is None


@pytest.mark.integration
def test_the_probe_says_a_311_only_broker_does_not_speak_v5() -> None:
    from cloud.embedded import EmbeddedServiceError, start_amqtt

    try:
        broker = start_amqtt()
    except EmbeddedServiceError as err:
        pytest.skip(str(err))
    try:
        assert broker_speaks_v5(BrokerAddress.parse(broker.url), ClientOptions("adapter-test"), timeout_s=3) is False
    finally:
        broker.stop()


def test_backoff_doubles_to_its_cap_and_never_overflows() -> None:
    backoff = ExponentialBackoff(0.1, 5.0)
    assert [backoff.delay(n) for n in range(1, 9)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    assert backoff.delay(0) == pytest.approx(0.1)
    assert backoff.delay(100_000) == 5.0  # days of failures in a row: still the cap, no OverflowError


def test_backoff_jitter_stays_within_its_bounds() -> None:
    backoff = ExponentialBackoff(1.0, 120.0, jitter=(0.5, 1.0))
    assert backoff.delay(3, rng=lambda: 0.0) == pytest.approx(2.0)
    assert backoff.delay(3, rng=lambda: 0.999999) == pytest.approx(4.0, rel=1e-5)
    wide = ExponentialBackoff(2.0, 30.0, jitter=(0.5, 1.5))
    assert wide.delay(10, rng=lambda: 0.5) == pytest.approx(30.0)
