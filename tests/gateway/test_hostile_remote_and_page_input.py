"""Hostile input that reaches the gateway without a device: remote config payloads, device strings on the page."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.config import ConfigError, validate_remote_config
from gateway.contract import Candidate, GatewayStatus
from gateway.local_page import render
from gateway.local_page.view import DeviceLine, PageFacts
from gateway.provisioning.remote_config import MAX_CONFIG_BYTES, parse_config_message

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("payload", [b"[" * 100_000, b"{" * 5000, b"\xff\xfe", b"null", b"{}",
                                     b'{"version": -1, "config": {}}', b'{"version": 1, "config": []}',
                                     b" " * (MAX_CONFIG_BYTES + 1)])
def test_a_garbage_config_message_is_a_config_error_never_another_exception(payload: bytes) -> None:
    with pytest.raises(ConfigError):
        parse_config_message(payload)


@pytest.mark.parametrize("document", [
    {"local_page": {"enabled": True, "bind": "0.0.0.0"}},
    {"local_page": {"button_file": "/var/log/syslog"}},  # a file anything touches would let anyone in
    {"mqtt": {"ca_file": "/etc/shadow"}},
    {"data_dir": "/"},
    {"usb": {"devices": [{"profile": "astm_meter", "driver": "os:system"}]}},
])
def test_a_remote_document_cannot_open_the_local_page_or_name_a_file(document: dict) -> None:
    with pytest.raises(ConfigError, match="only in the gateway's own TOML"):
        validate_remote_config(document)


def test_what_devices_announce_is_escaped_on_the_page() -> None:
    now = datetime.now(UTC)
    evil = '"><img src=x onerror=alert(1)><script>'
    candidate = Candidate(uid="ble:C0:FF:EE:00:00:01", transport="ble", profile="blood_pressure", type=evil,
                          make=evil, model=evil, name=evil, rssi=-50, user_slots=2, first_heard=now, last_heard=now)
    line = DeviceLine(uid="ble:C0:FF:EE:00:00:02", title=evil, battery=50, last_reading=None, error=evil,
                      transport="ble", user_index=None, from_config=False)
    facts = PageFacts(status=GatewayStatus(gateway_id="gw-1", online=True, at=now, version=evil[:60]),
                      connected=True, devices=[line], candidates=[candidate], window_remaining_s=0,
                      waiting_for_claim=False, problems=[(evil, evil)])
    page = render.status_page(facts, csrf='t"><x', notice=evil, now=now)
    assert "<script" not in page and "<img" not in page
    assert 'value="t&quot;&gt;&lt;x"' in page and '&quot;&gt;&lt;img src=x' in page
