"""The gateway fleet in the care-team workspace (issue 19), in real headless Chromium against the real API over
HTTP, real PostgreSQL and the real broker (config documents are published retained): a care-team member claims a
gateway by the code on its label from the patient's page (a mistyped code and a wrong code get clear errors),
sees what the gateway proposes, confirms the cuff for user 2 and ignores the neighbour's scale (the config
document's devices section and the device's binding and assignment change in the database), unpairs and releases
behind a confirm dialog, and filters the fleet to gateways offline for more than a day, kept in the address.
Screenshots go to ``tests/artifacts/fleet_view.png`` and ``tests/artifacts/gateway_candidates.png`` (and a few
more ``fleet_*.png``).

Gateways are made as in tests/cloud/api/test_gateways_api.py: a gateway's own signed bootstrap poll
(tests.cloud.fleet.signed_polls.FakeGateway), and its retained status written with ingest's own statement
(``UPSERT_GATEWAY_STATUS``), so the page shows what ingest would have stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import psycopg
import pytest
from psycopg.types.json import Jsonb

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.ingest.queries import UPSERT_GATEWAY_STATUS
from cloud.settings import CloudSettings
from tests.chromium import launched_chromium
from tests.cloud.api.test_ui_browser import BROWSER_ZONE, DEV_KEY
from tests.cloud.api.ui_live_server import LiveServer
from tests.cloud.fleet.signed_polls import FakeGateway

pytestmark = pytest.mark.integration
CUFF = "ble:C0:FF:EE:00:00:02"
SCALE = "ble:5C:A1:E0:00:00:09"
REJECTION = "uplink did not come up with version 3 (broker refused the login); rolled back to version 2"


@dataclass
class Fleet:
    url: str
    database_url: str
    team: str
    patient: str
    """Ana Lindqvist: the patient whose gateway is claimed in the browser."""
    others: list[str]
    token: str
    headers: dict[str, str]
    tmp: Path
    gateways: dict[str, FakeGateway] = field(default_factory=dict)

    def http(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=20)


def report_status(conn: psycopg.Connection, gateway_id: str, at: datetime | None = None, **fields: Any) -> None:
    """A gateway's retained status as ingest stores it (the same statement, the same document shape)."""
    at = at or datetime.now(UTC)
    status = {"v": 1, "gateway_id": gateway_id, "online": True, "at": at.isoformat(), **fields}
    conn.execute(UPSERT_GATEWAY_STATUS, (gateway_id, at, Jsonb(status)))


def claim(fleet: Fleet, http: httpx.Client, patient: str, name: str, gateway_id: str | None = None) -> FakeGateway:
    """A gateway that polled once (its key pinned) and was claimed for ``patient`` through the API."""
    gateway = FakeGateway.make(fleet.tmp / name, gateway_id=gateway_id)
    assert gateway.poll(http).status_code == 202
    answer = http.post("/v1/gateways/claim", json={"code": gateway.identity.claim_code, "patient_id": patient},
                       headers=fleet.headers)
    assert answer.status_code == 201, answer.text
    fleet.gateways[name] = gateway
    return gateway


def _query(database_url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


@pytest.fixture
def fleet(fresh_database_url: str, unique_id: str, mqtt_broker: Any, tmp_path: Path) -> Iterator[Fleet]:
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4,
                             mqtt_url=mqtt_broker.url, gateway_broker_url="mqtt://broker.example.test:8883",
                             broker_password_file=tmp_path / "gateways.passwd", bootstrap_poll_burst=1000)
    team = f"{unique_id}-team"
    patient = f"{unique_id}-ana"
    others = [f"{unique_id}-p{i:02d}" for i in range(3)]
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Heart failure clinic'), (%s, 'Elsewhere')",
                     (team, f"{team}-other"))
        for p, name in [(patient, "Ana Lindqvist"), *((o, f"Patient {i}") for i, o in enumerate(others))]:
            conn.execute("INSERT INTO patients (id, display_name, timezone) VALUES (%s, %s, 'Europe/Stockholm')",
                         (p, name))
            conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                         (p, team, ["readings", "alerts", "twin"], p))
        conn.execute("INSERT INTO patients (id) VALUES (%s)", (f"{unique_id}-stranger",))
        conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                     (f"{unique_id}-stranger", f"{team}-other", ["readings"], f"{unique_id}-stranger"))
    token = mint_token(settings, role="care_team", sub=f"{unique_id}-nurse", care_teams=(team,), ttl_s=900)
    with LiveServer(create_app(settings)) as server:
        yield Fleet(server.url, fresh_database_url, team, patient, others, token,
                    {"Authorization": f"Bearer {token}"}, tmp_path)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium()


def _tab(browser: Any, fleet: Fleet, **options: Any) -> tuple[Any, Any]:
    context = browser.new_context(timezone_id=BROWSER_ZONE, locale="en-GB",
                                  **({"viewport": {"width": 1280, "height": 900}} | options))
    context.set_default_timeout(15_000)  # two shared cores: the first answers can take seconds
    tab = context.new_page()
    tab.problems = []
    tab.on("console", lambda m: m.type == "error" and "status of 4" not in m.text
           and tab.problems.append(f"console: {m.text}"))
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    tab.on("request", lambda r: r.url.startswith(fleet.url) or tab.problems.append(f"outside request: {r.url}"))
    return context, tab


@pytest.fixture
def page(browser: Any, fleet: Fleet) -> Iterator[Any]:
    context, tab = _tab(browser, fleet)
    try:
        yield tab
    finally:
        context.close()


def _open(tab: Any, fleet: Fleet, hash_: str) -> None:
    from playwright.sync_api import expect

    tab.goto(f"{fleet.url}/ui#token={fleet.token}")
    expect(tab.locator("body")).to_have_attribute("data-view", "panel")
    tab.evaluate(f"location.hash = {hash_!r}")


def _devices_section(database_url: str, gateway_id: str) -> dict[str, Any]:
    [(document,)] = _query(database_url, "SELECT document -> 'devices' FROM gateway_configs WHERE gateway_id = %s"
                           " ORDER BY version DESC LIMIT 1", gateway_id)
    return document


# --- claiming and confirming from the patient's page -----------------------------------------------------------

def test_a_gateway_is_claimed_by_code_and_its_cuff_confirmed_and_the_neighbours_scale_ignored(
        page: Any, fleet: Fleet, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab = page
    gateway = FakeGateway.make(fleet.tmp / "box")
    with fleet.http() as http:
        assert gateway.poll(http).status_code == 202  # switched on, online, waiting for its claim
    _open(tab, fleet, f"#/patients/{fleet.patient}")
    expect(tab.locator("body")).to_have_attribute("data-view", "patient")
    section = tab.locator("#patient-gateways")
    expect(section).to_contain_text("No gateway is claimed for this patient yet.")
    code = section.get_by_label("Claim code")
    claim_audit = "SELECT status FROM audit_log WHERE action = 'POST /v1/gateways/claim' ORDER BY id"

    # A code of the wrong length is caught in the page: nothing is sent, nothing counts as a wrong guess.
    code.fill("7KQ4-M2XD")
    section.get_by_role("button", name="Claim").click()
    expect(section.locator(".claim-error")).to_contain_text("A claim code has 12 letters and digits")
    expect(code).to_have_attribute("aria-invalid", "true")
    assert _query(fleet.database_url, claim_audit) == []
    # A well-formed code no gateway waits with: the server's 404, in words that say what to check.
    code.fill("ZZZZ-ZZZZ-ZZZZ")
    section.get_by_role("button", name="Claim").click()
    expect(section.locator(".claim-error")).to_contain_text("No gateway is waiting to be claimed with this code")
    assert _query(fleet.database_url, claim_audit) == [(404,)]

    # The code as someone types it from the label: lower case, spaces, an O for a zero.
    typed = gateway.identity.claim_code.lower().replace("-", " ").replace("0", "o")
    code.fill(typed)
    section.get_by_role("button", name="Claim").click()
    block = section.locator(f'.gateway-block[data-gateway-id="{gateway.gateway_id}"]')
    expect(block).to_be_visible()
    expect(section.locator(".gateway-message").first).to_contain_text(
        f"Gateway {gateway.gateway_id} claimed for Ana Lindqvist")
    expect(section.locator(".claim-error")).to_have_text("")
    assert _query(fleet.database_url, "SELECT patient_id, care_team_id FROM gateway_claims WHERE gateway_id = %s"
                  " AND released_at IS NULL", gateway.gateway_id) == [(fleet.patient, fleet.team)]
    assert _query(fleet.database_url, claim_audit) == [(404,), (201,)]

    # Provisioned at its next poll, the gateway connects and reports what it hears: the patient's two-user cuff,
    # close by, and a scale through the wall.
    with fleet.http() as http:
        assert gateway.poll(http).status_code == 200
    heard = datetime.now(UTC) - timedelta(minutes=3)
    with psycopg.connect(fleet.database_url, autocommit=True) as conn:
        report_status(conn, gateway.gateway_id, version="1.4.2", candidates=[
            {"uid": CUFF, "transport": "ble", "profile": "ble.blood_pressure", "type": "Blood pressure monitor",
             "make": "Omron", "model": "HEM-7600T", "rssi": -58, "user_slots": 2,
             "first_heard": heard.isoformat(), "last_heard": heard.isoformat()},
            {"uid": SCALE, "transport": "ble", "profile": "ble.weight_scale", "type": "Weight scale",
             "make": "A&D", "model": "UC-352BLE", "rssi": -91,
             "first_heard": heard.isoformat(), "last_heard": heard.isoformat()}])
    tab.reload()
    expect(tab.locator("body")).to_have_attribute("data-view", "patient")
    cuff = block.locator(f'.candidate[data-uid="{CUFF}"]')
    scale = block.locator(f'.candidate[data-uid="{SCALE}"]')
    expect(cuff.locator("h5, h6")).to_have_text("Blood pressure monitor Omron HEM-7600T")
    expect(cuff.locator(".signal")).to_have_text("Bluetooth, strong signal (-58 dBm)")
    expect(scale.locator(".signal")).to_have_text("Bluetooth, weak signal (-91 dBm): maybe a neighbour's")
    expect(scale.locator(".slot-choice")).to_have_count(0)  # one user only: nothing to choose
    expect(block.locator(".gateway-facts")).to_contain_text("1.4.2")
    expect(block).to_contain_text("Devices waiting to be confirmed (2)")

    # A two-user cuff: the slot is asked, not assumed.
    cuff.get_by_role("button", name="Confirm").click()
    expect(cuff.locator(".error")).to_contain_text("Choose which user of the device Ana Lindqvist is first")
    assert _query(fleet.database_url, "SELECT count(*) FROM gateway_configs WHERE gateway_id = %s",
                  gateway.gateway_id) == [(0,)]
    cuff.get_by_label("User 2").check()
    expect(cuff.locator(".error")).to_have_text("")
    block.scroll_into_view_if_needed()
    tab.screenshot(path=str(artifacts_dir / "gateway_candidates.png"), full_page=True)
    cuff.get_by_role("button", name="Confirm").click()
    expect(section.locator("#patient-gateways-status")).to_contain_text(
        "Confirmed: Blood pressure monitor. Its readings go to Ana Lindqvist's record.")
    expect(cuff.locator(".pending")).to_contain_text("Confirmed: the gateway starts reading it")
    scale.get_by_role("button", name="Ignore (not this patient's)").click()
    expect(scale.locator(".pending")).to_contain_text("Ignored")
    # Confirmed, and named by what it announced until the gateway first reports it as its own device.
    expect(block.locator(f'.paired-device[data-uid="{CUFF}"]')).to_contain_text("Blood pressure monitor")
    expect(block.locator(f'.paired-device[data-uid="{CUFF}"]')).to_contain_text("User 2 on the device")

    # The config document says so, the cuff is bound to this gateway and assigned to Ana as user 2; the scale
    # is neither bound nor assigned to anyone.
    assert _devices_section(fleet.database_url, gateway.gateway_id) == {
        "confirmed": [{"uid": CUFF, "user_index": 2}], "ignored": [SCALE], "unpaired": []}
    assert _query(fleet.database_url, "SELECT bound_gateway_id FROM devices WHERE uid = %s", CUFF) == [
        (gateway.gateway_id,)]
    assert _query(fleet.database_url, "SELECT patient_id, user_index FROM device_assignments WHERE device_uid = %s"
                  " AND valid_to IS NULL", CUFF) == [(fleet.patient, 2)]
    assert _query(fleet.database_url, "SELECT count(*) FROM device_assignments WHERE device_uid = %s", SCALE) == [(0,)]
    decisions = ("SELECT detail ->> 'decision', detail ->> 'user_index', patient_ids FROM audit_log"
                 " WHERE action LIKE 'POST /v1/gateways/{gateway_id}/devices/%%' AND status = 200 ORDER BY id")
    assert _query(fleet.database_url, decisions) == [
        ("confirm", "2", [fleet.patient]), ("ignore", None, [fleet.patient])]
    tab.screenshot(path=str(artifacts_dir / "fleet_patient_decided.png"), full_page=True)

    # The gateway applies version 2 and reports the cuff as its device: it is listed as confirmed, with Unpair.
    with psycopg.connect(fleet.database_url, autocommit=True) as conn:
        report_status(conn, gateway.gateway_id, version="1.4.2", config={"version": 2},
                      devices=[{"uid": CUFF, "profile": "ble.blood_pressure", "battery": 15,
                                "last_seen": datetime.now(UTC).isoformat()}])
    tab.reload()
    paired = block.locator(f'.paired-device[data-uid="{CUFF}"]')
    expect(paired).to_contain_text("User 2 on the device")
    expect(paired).to_contain_text("battery low")
    expect(block.locator(".candidate")).to_have_count(0)
    # Unpair asks first: Cancel changes nothing, Unpair ends the assignment (its readings stay).
    paired.get_by_role("button", name="Unpair").click()
    dialog = tab.locator("dialog.confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("no longer assigned to Ana Lindqvist")
    expect(dialog.get_by_role("button", name="Cancel")).to_be_focused()
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_have_count(0)
    assert _devices_section(fleet.database_url, gateway.gateway_id)["unpaired"] == []
    paired.get_by_role("button", name="Unpair").click()
    tab.locator("dialog.confirm-dialog").get_by_role("button", name="Unpair").click()
    expect(section.locator("#patient-gateways-status")).to_contain_text(f"Unpaired: Blood pressure {CUFF}")
    assert _devices_section(fleet.database_url, gateway.gateway_id) == {
        "confirmed": [], "ignored": [SCALE], "unpaired": [CUFF]}
    assert _query(fleet.database_url, "SELECT count(*) FROM device_assignments WHERE device_uid = %s"
                  " AND (valid_to IS NULL OR valid_to > now())", CUFF) == [(0,)]
    assert tab.problems == []


def test_too_many_wrong_codes_are_told_apart_from_a_wrong_code(browser: Any, fleet: Fleet, unique_id: str) -> None:
    from playwright.sync_api import expect

    # A guesser of the same team: the limit counts per caller (10 in 15 min by default).
    guesser = mint_token(CloudSettings(database_url=fleet.database_url, jwt_dev_key=DEV_KEY), role="clinician",
                         sub=f"{unique_id}-guesser", care_teams=(fleet.team,), ttl_s=900)
    context, tab = _tab(browser, fleet)
    try:
        tab.goto(f"{fleet.url}/ui#token={guesser}")
        expect(tab.locator("body")).to_have_attribute("data-view", "panel")
        tab.evaluate(f"location.hash = '#/patients/{fleet.patient}'")
        section = tab.locator("#patient-gateways")
        code = section.get_by_label("Claim code")
        for i in range(10):
            code.fill(f"ZZZZ-ZZZZ-ZZ{i:02d}".replace("0", "A").replace("1", "B"))
            section.get_by_role("button", name="Claim").click()
            expect(section.locator(".claim-error")).to_contain_text("No gateway is waiting")
            tab.evaluate("document.querySelector('#patient-gateways .claim-error').textContent = ''")
        code.fill("ZZZZ-ZZZZ-ZZZZ")
        section.get_by_role("button", name="Claim").click()
        expect(section.locator(".claim-error")).to_contain_text("Too many wrong claim codes from you")
        assert [r[0] for r in _query(fleet.database_url, "SELECT status FROM audit_log WHERE action ="
                                     " 'POST /v1/gateways/claim' ORDER BY id")] == [404] * 10 + [429]
        assert tab.problems == []
    finally:
        context.close()


# --- one gateway's page ----------------------------------------------------------------------------------------

def test_the_gateway_page_rotates_credentials_and_releases_behind_a_confirm_dialog(
        page: Any, fleet: Fleet, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab = page
    with fleet.http() as http:
        gateway = claim(fleet, http, fleet.patient, "detail")
        assert gateway.poll(http).status_code == 200  # provisioned: it has a password
        uid = "ble:AB:CD:EF:01:02:03"
        assert http.post(f"/v1/gateways/{gateway.gateway_id}/devices/{uid}/confirm", json={},
                         headers=fleet.headers).status_code == 200
    with psycopg.connect(fleet.database_url, autocommit=True) as conn:
        report_status(conn, gateway.gateway_id, version="1.4.2", outbox_depth=0, config={"version": 1},
                      devices=[{"uid": uid, "profile": "ble.glucose", "battery": 80}])
    _open(tab, fleet, f"#/gateways/{gateway.gateway_id}")
    expect(tab.locator("body")).to_have_attribute("data-view", "gateway")
    expect(tab.locator("#nav-gateways")).to_have_attribute("aria-current", "")
    expect(tab.locator("#gateway-title")).to_have_text(f"Gateway {gateway.gateway_id}")
    facts = tab.locator("#gateway-body .gateway-facts")
    expect(facts.get_by_role("link", name="Ana Lindqvist")).to_have_attribute("href", f"#/patients/{fleet.patient}")
    expect(facts).to_contain_text("Online for")
    expect(facts).to_contain_text("Nothing waiting")
    expect(facts).to_contain_text("Version 1 (the latest)")
    expect(facts).to_contain_text("Password, in use")
    expect(tab.locator(f'.paired-device[data-uid="{uid}"]')).to_contain_text("Glucose")
    tab.screenshot(path=str(artifacts_dir / "fleet_gateway_page.png"), full_page=True)

    credentials = "SELECT count(*) FROM gateway_credentials WHERE gateway_id = %s"
    [(before,)] = _query(fleet.database_url, credentials, gateway.gateway_id)
    tab.get_by_role("button", name="Rotate credentials").click()
    tab.locator("dialog.confirm-dialog").get_by_role("button", name="Issue new credentials").click()
    expect(tab.locator("#gateway-body .gateway-message")).to_contain_text("New credentials issued")
    assert _query(fleet.database_url, credentials, gateway.gateway_id) == [(before + 1,)]

    tab.get_by_role("button", name="Release the gateway").click()
    dialog = tab.locator("dialog.confirm-dialog")
    expect(dialog).to_contain_text("It stops sending readings for Ana Lindqvist")
    tab.screenshot(path=str(artifacts_dir / "fleet_release_dialog.png"))
    tab.keyboard.press("Escape")  # Escape is Cancel
    expect(dialog).to_have_count(0)
    claimed = "SELECT count(*) FROM gateway_claims WHERE gateway_id = %s AND released_at IS NULL"
    assert _query(fleet.database_url, claimed, gateway.gateway_id) == [(1,)]
    tab.get_by_role("button", name="Release the gateway").click()
    tab.locator("dialog.confirm-dialog").get_by_role("button", name="Release").click()
    expect(tab.locator("#gateway-body .gateway-message")).to_contain_text(
        f"Gateway {gateway.gateway_id} released from Ana Lindqvist; 1 device unpaired.")
    assert _query(fleet.database_url, claimed, gateway.gateway_id) == [(0,)]
    # Released, the gateway is no longer this team's: its page is a 404 like any gateway it may not see.
    tab.reload()
    expect(tab.locator("#status")).to_contain_text("No such patient, alert or gateway")
    assert tab.problems == []


# --- the fleet view --------------------------------------------------------------------------------------------

def _seed_fleet(fleet: Fleet) -> dict[str, str]:
    """Three kinds of gateway for the team's patients, an unclaimed one, and 50 quiet ones (paging) whose ids sort
    after the others' (``gw-`` and hex), so the three are on the first page."""
    now = datetime.now(UTC)
    with fleet.http() as http, psycopg.connect(fleet.database_url, autocommit=True) as conn:
        busy = claim(fleet, http, fleet.others[0], "busy").gateway_id
        for interval in (60, 30, 15):  # three versions set in the cloud; the gateway refused the third
            assert http.put(f"/v1/gateways/{busy}/config", json={"config": {"status_interval_s": interval}},
                            headers=fleet.headers).status_code == 200
        report_status(conn, busy, version="1.4.2", outbox_depth=12, outbox_oldest_age_s=3 * 3600 + 600,
                      config={"version": 2, "rejected": {"version": 3, "reason": REJECTION}},
                      devices=[{"uid": "ble:AA:00:00:00:00:01", "profile": "ble.blood_pressure", "battery": 9}],
                      candidates=[{"uid": "ble:AA:00:00:00:00:02", "transport": "ble", "profile": "ble.weight_scale",
                                   "first_heard": now.isoformat(), "last_heard": now.isoformat()}])
        quiet = claim(fleet, http, fleet.others[1], "quiet").gateway_id
        # Online until two days ago, then its last will: stored as ingest stores them, then both times moved
        # back two days, as if they had happened then.
        gone = now - timedelta(days=2, hours=1)
        report_status(conn, quiet, at=gone - timedelta(hours=5), version="1.3.0", outbox_depth=0)
        report_status(conn, quiet, at=gone, online=False, version="1.3.0", outbox_depth=0)
        # The presence trigger stamps a change with the database's now(): moved back to when it happened.
        conn.execute("UPDATE gateway_presence SET since = %s WHERE gateway_id = %s", (gone, quiet))
        fresh = claim(fleet, http, fleet.others[2], "fresh").gateway_id  # claimed, never connected
        stranger = FakeGateway.make(fleet.tmp / "stranger")
        assert stranger.poll(http).status_code == 202
        report_status(conn, stranger.gateway_id)  # another team's (unclaimed) gateway: never on this team's list
        for i in range(50):
            quiet_one = claim(fleet, http, fleet.patient, f"filler{i}", gateway_id=f"gw-zz-filler-{i:02d}").gateway_id
            report_status(conn, quiet_one, version="1.4.2", outbox_depth=0)
    return {"busy": busy, "quiet": quiet, "fresh": fresh, "stranger": stranger.gateway_id}


def test_the_fleet_shows_each_gateway_in_words_and_filters_to_offline_over_a_day(
        page: Any, fleet: Fleet, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab = page
    ids = _seed_fleet(fleet)
    _open(tab, fleet, "#/")
    tab.get_by_role("link", name="Gateways").click()
    expect(tab.locator("body")).to_have_attribute("data-view", "fleet")
    rows = tab.locator("#fleet-table tbody tr")
    expect(rows).to_have_count(50)
    expect(tab.locator(".fleet-paging .range").first).to_have_text("Gateways 1\u201350")
    busy = tab.locator(f'#fleet-table tr[data-gateway-id="{ids["busy"]}"]')
    expect(busy.locator(".connection")).to_have_text("●Online for less than a minute")
    expect(busy.locator(".backlog")).to_have_text("12 readings waiting, oldest 3 h")
    expect(busy.locator(".settings")).to_contain_text("Running version 2; version 3 not applied yet")
    expect(busy.locator(".config-refused")).to_have_text(f"Version 3 refused: {REJECTION}")
    expect(busy.locator(".devices")).to_have_text("Blood pressure: battery low")
    expect(busy.locator(".candidates")).to_have_text("1 to confirm")
    expect(busy.locator('td[data-label="Patient"]')).to_have_text(fleet.others[0])
    quiet = tab.locator(f'#fleet-table tr[data-gateway-id="{ids["quiet"]}"]')
    expect(quiet.locator(".connection")).to_have_text("○Offline for 2 days")
    fresh = tab.locator(f'#fleet-table tr[data-gateway-id="{ids["fresh"]}"]')
    expect(fresh.locator(".connection")).to_contain_text("Never connected")
    expect(tab.locator(f'#fleet-table tr[data-gateway-id="{ids["stranger"]}"]')).to_have_count(0)
    tab.screenshot(path=str(artifacts_dir / "fleet_view.png"))

    # Page 2 holds the other three of the team's 53, and the page is in the address.
    tab.locator(".fleet-paging").first.get_by_role("button", name="Next →").click()
    expect(tab.locator(".fleet-paging .range").first).to_have_text("Gateways 51\u201353")
    assert "page=2" in tab.url
    tab.go_back()
    expect(rows).to_have_count(50)

    tab.locator('.chip[data-filter="offline_24h"]').click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-gateway-id", ids["quiet"])
    expect(tab.locator('.chip[data-filter="offline_24h"]')).to_have_attribute("aria-pressed", "true")
    assert "filter=offline_24h" in tab.url
    tab.screenshot(path=str(artifacts_dir / "fleet_offline_24h.png"))
    # Kept in the address: a reload (or a shared link) opens the same view.
    tab.reload()
    expect(tab.locator("body")).to_have_attribute("data-view", "fleet")
    expect(rows).to_have_count(1)
    tab.locator('.chip[data-filter="backlog_1h"]').click()  # both must hold: none is offline *and* backlogged
    expect(rows).to_have_count(0)
    expect(tab.locator("#fleet-empty")).to_contain_text("No gateway has been offline for more than 24 hours.")
    tab.locator('.chip[data-filter="offline_24h"]').click()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-gateway-id", ids["busy"])
    assert "filter=backlog_1h" in tab.url and "offline_24h" not in tab.url
    tab.go_back()
    tab.go_back()
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-gateway-id", ids["quiet"])

    # The row's link opens the gateway, whose candidate waits there to be confirmed.
    tab.evaluate("location.hash = '#/gateways'")
    busy.locator(".candidates a").click()
    expect(tab.locator("body")).to_have_attribute("data-view", "gateway")
    expect(tab.locator('.candidate[data-uid="ble:AA:00:00:00:00:02"]')).to_contain_text("Weight scale")
    expect(tab.locator("#gateway-body .config-refused")).to_contain_text(REJECTION)
    assert tab.problems == []


def test_the_fleet_and_the_claim_form_fit_a_phone(browser: Any, fleet: Fleet, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    ids = _seed_fleet(fleet)
    context, tab = _tab(browser, fleet, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True,
                        device_scale_factor=2)
    try:
        _open(tab, fleet, "#/gateways")
        rows = tab.locator("#fleet-table tbody tr")
        expect(rows).to_have_count(50)
        assert rows.first.evaluate("r => getComputedStyle(r).display") == "block"
        assert tab.evaluate("document.documentElement.scrollWidth") <= 360
        tab.locator(f'#fleet-table tr[data-gateway-id="{ids["busy"]}"]').scroll_into_view_if_needed()
        tab.screenshot(path=str(artifacts_dir / "fleet_phone.png"))
        for view in (f"#/gateways/{ids['busy']}", f"#/patients/{fleet.others[0]}"):
            tab.evaluate(f"location.hash = {view!r}")
            expect(tab.locator("body")).to_have_attribute("data-view", "gateway" if "gateways" in view else "patient")
            expect(tab.locator("main > section:not([hidden]) .claim-form")).to_be_visible()
            assert tab.evaluate("document.documentElement.scrollWidth") <= 360, view
        tab.locator("#patient-gateways").scroll_into_view_if_needed()
        tab.screenshot(path=str(artifacts_dir / "fleet_phone_patient.png"))
        assert tab.problems == []
    finally:
        context.close()


def test_what_the_page_sends_is_what_the_api_documents(fleet: Fleet) -> None:
    """The calls fleet.js makes, each answered 2xx or a typed problem (never a 500), for a caller who may act."""
    with fleet.http() as http:
        gateway = claim(fleet, http, fleet.patient, "calls")
        base = f"/v1/gateways/{gateway.gateway_id}"
        for path in ("/v1/gateways?limit=1000&offset=0&offline_over_s=86400&backlog_over_s=3600", base,
                     f"{base}/candidates", f"{base}/config"):
            assert http.get(path, headers=fleet.headers).status_code == 200, path
        # A uid with slashes and colons, encoded as the page encodes it (encodeURIComponent).
        uid = "usb:0000:0000:/dev/serial/by-id/meter"
        answer = http.post(f"{base}/devices/{quote(uid, safe='')}/ignore", json={}, headers=fleet.headers)
        assert answer.status_code == 200, answer.text
        assert json.loads(answer.text)["uid"] == uid
        bad = http.post("/v1/gateways/claim", json={"code": "", "patient_id": fleet.patient}, headers=fleet.headers)
        assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")


def test_the_patient_page_reads_and_audits_that_patients_gateways_alone(fleet: Fleet, unique_id: str) -> None:
    """``GET /v1/patients/{id}/gateways`` (what the patient page asks): that patient's claimed gateways only, the
    audit row naming that patient only, a released claim gone, another team's member refused with 404."""
    with fleet.http() as http:
        mine = claim(fleet, http, fleet.patient, "mine").gateway_id
        other = claim(fleet, http, fleet.others[0], "other").gateway_id
        released = claim(fleet, http, fleet.patient, "released").gateway_id
        assert http.delete(f"/v1/gateways/{released}/claim", headers=fleet.headers).status_code == 200
        answer = http.get(f"/v1/patients/{fleet.patient}/gateways", headers=fleet.headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert [g["gateway_id"] for g in body["gateways"]] == [mine]
        assert body["gateways"][0]["patient_id"] == fleet.patient and body["gateways"][0]["state"] == "never_connected"
        assert other not in answer.text
        [(patients,)] = _query(fleet.database_url, "SELECT patient_ids FROM audit_log WHERE action ="
                               " 'GET /v1/patients/{patient_id}/gateways' ORDER BY id DESC LIMIT 1")
        assert patients == [fleet.patient]
        elsewhere = mint_token(CloudSettings(database_url=fleet.database_url, jwt_dev_key=DEV_KEY), role="clinician",
                               sub=f"{unique_id}-elsewhere", care_teams=(f"{fleet.team}-other",), ttl_s=900)
        refused = http.get(f"/v1/patients/{fleet.patient}/gateways", headers={"Authorization": f"Bearer {elsewhere}"})
        assert refused.status_code == 404
        assert refused.headers["content-type"].startswith("application/problem+json")
