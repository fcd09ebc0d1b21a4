"""The care-team workspace (``/ui``) audited with axe-core in real Chromium: the sign-in view, the triage panel,
a patient's page (summaries, alerts, charts, devices) and the inbox, on a desktop and on a phone, against the
real API and PostgreSQL with the ward of tests.cloud.api.ui_live_server. Any serious or critical violation fails
(tests/a11y/axe.py); each result is kept as ``tests/artifacts/a11y_workspace_*.json``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from tests.a11y.axe import audit, axe_source  # noqa: F401  (axe_source is a fixture)
from tests.chromium import launched_chromium
from tests.cloud.api.test_ui_browser import BROWSER_ZONE, DEV_KEY
from tests.cloud.api.ui_live_server import LiveServer, Ward, seed_ward

pytestmark = pytest.mark.integration


@dataclass
class Site:
    url: str
    ward: Ward
    token: str


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium("the audit")


@pytest.fixture
def site(fresh_database_url: str, unique_id: str) -> Iterator[Site]:
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        ward = seed_ward(conn, unique_id)
    token = mint_token(settings, role="clinician", sub=f"{unique_id}-dr", care_teams=(ward.team,), ttl_s=900)
    with LiveServer(create_app(settings)) as server:
        yield Site(server.url, ward, token)


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "phone"])
def test_the_workspace_pages_have_no_serious_or_critical_violation(browser: object, site: Site, viewport: dict,
                                                                    axe_source: str,  # noqa: F811
                                                                    artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)  # two shared cores: the first API answers can take seconds
    size = "desktop" if viewport["width"] > 800 else "phone"
    context = browser.new_context(viewport=viewport, timezone_id=BROWSER_ZONE, locale="en-GB")  # type: ignore[attr-defined]
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    try:
        tab.goto(f"{site.url}/ui")
        expect(tab.locator("body")).to_have_attribute("data-view", "sign-in")
        audit(tab, axe_source, f"workspace_sign_in_{size}", artifacts_dir)

        tab.goto("about:blank")  # a new document, not a same-page fragment change
        tab.goto(f"{site.url}/ui#token={site.token}")
        expect(tab.locator("body")).to_have_attribute("data-view", "panel", timeout=20_000)
        expect(tab.locator("#panel-table tbody tr")).to_have_count(len(site.ward.expected_order))
        result = audit(tab, axe_source, f"workspace_panel_{size}", artifacts_dir)
        assert result["passes"] > 10  # the audit ran its rules on a real page, not on an empty one

        crisis = site.ward.patients["crisis"]
        tab.evaluate(f"location.hash = '#/patients/{crisis}?days=14'")
        expect(tab.locator("body")).to_have_attribute("data-view", "patient")
        expect(tab.locator("#chart-bp svg.chart-svg")).to_be_visible()
        tab.locator("#chart-bp details summary").click()  # the chart's data table, opened, is audited too
        audit(tab, axe_source, f"workspace_patient_{size}", artifacts_dir)

        tab.evaluate("location.hash = '#/inbox'")
        expect(tab.locator("body")).to_have_attribute("data-view", "inbox")
        expect(tab.locator("#inbox-list li").first).to_be_visible()
        audit(tab, axe_source, f"workspace_inbox_{size}", artifacts_dir)
        tab.screenshot(path=str(artifacts_dir / f"a11y_workspace_inbox_{size}.png"), full_page=True)
        assert errors == []
    finally:
        context.close()


# --- the gateway fleet (issue 19): the fleet view, a gateway's page, the patient's gateways and a dialog ---------

@pytest.fixture
def fleet_site(fresh_database_url: str, unique_id: str, tmp_path: Path) -> Iterator[tuple[Site, str]]:
    """The ward, and a gateway claimed for its crisis patient that proposes a two-user cuff and a far-off scale
    (its poll and claim through the API, its status written with ingest's statement)."""
    from datetime import UTC, datetime

    import httpx
    from psycopg.types.json import Jsonb

    from cloud.ingest.queries import UPSERT_GATEWAY_STATUS
    from tests.cloud.fleet.signed_polls import FakeGateway

    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        ward = seed_ward(conn, unique_id)
    token = mint_token(settings, role="clinician", sub=f"{unique_id}-dr", care_teams=(ward.team,), ttl_s=900)
    gateway = FakeGateway.make(tmp_path)
    with LiveServer(create_app(settings)) as server:
        with httpx.Client(base_url=server.url, timeout=20) as http:
            assert gateway.poll(http).status_code == 202
            claimed = http.post("/v1/gateways/claim", headers={"Authorization": f"Bearer {token}"},
                                json={"code": gateway.identity.claim_code, "patient_id": ward.patients["crisis"]})
            assert claimed.status_code == 201, claimed.text
        now = datetime.now(UTC).isoformat()
        status = {"v": 1, "gateway_id": gateway.gateway_id, "online": True, "at": now, "version": "1.4.2",
                  "outbox_depth": 12, "outbox_oldest_age_s": 11_000.0,
                  "devices": [{"uid": "ble:AA:00:00:00:00:01", "profile": "ble.glucose", "battery": 9}],
                  "candidates": [
                      {"uid": "ble:C0:FF:EE:00:00:02", "transport": "ble", "profile": "ble.blood_pressure",
                       "type": "Blood pressure monitor", "make": "Omron", "model": "HEM-7600T", "rssi": -58,
                       "user_slots": 2, "first_heard": now, "last_heard": now},
                      {"uid": "ble:5C:A1:E0:00:00:09", "transport": "ble", "profile": "ble.weight_scale",
                       "type": "Weight scale", "rssi": -91, "first_heard": now, "last_heard": now}]}
        with psycopg.connect(fresh_database_url, autocommit=True) as conn:
            conn.execute(UPSERT_GATEWAY_STATUS, (gateway.gateway_id, datetime.now(UTC), Jsonb(status)))
        yield Site(server.url, ward, token), gateway.gateway_id


@pytest.mark.parametrize("viewport", [{"width": 1280, "height": 900}, {"width": 390, "height": 844}],
                         ids=["desktop", "phone"])
def test_the_fleet_pages_have_no_serious_or_critical_violation(browser: object, fleet_site: tuple[Site, str],
                                                               viewport: dict, axe_source: str,  # noqa: F811
                                                               artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)
    site, gateway_id = fleet_site
    size = "desktop" if viewport["width"] > 800 else "phone"
    context = browser.new_context(viewport=viewport, timezone_id=BROWSER_ZONE, locale="en-GB")  # type: ignore[attr-defined]
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda e: errors.append(str(e)))
    try:
        tab.goto(f"{site.url}/ui#token={site.token}")
        expect(tab.locator("body")).to_have_attribute("data-view", "panel", timeout=20_000)
        tab.evaluate("location.hash = '#/gateways?filter=backlog_1h'")
        expect(tab.locator("body")).to_have_attribute("data-view", "fleet")
        expect(tab.locator("#fleet-table tbody tr")).to_have_count(1)
        result = audit(tab, axe_source, f"workspace_fleet_{size}", artifacts_dir)
        assert result["passes"] > 10

        tab.evaluate(f"location.hash = '#/gateways/{gateway_id}'")
        expect(tab.locator("body")).to_have_attribute("data-view", "gateway")
        expect(tab.locator("#gateway-body .candidate")).to_have_count(2)
        claim = tab.locator("#gateway-body .claim-form")
        claim.get_by_label("Claim code").fill("7KQ4")  # too short: the form's error state is audited too
        claim.get_by_role("button", name="Claim").click()
        expect(claim.locator(".claim-error")).to_contain_text("12 letters and digits")
        audit(tab, axe_source, f"workspace_gateway_{size}", artifacts_dir)
        tab.locator("#gateway-body").get_by_role("button", name="Release the gateway").click()
        expect(tab.locator("dialog.confirm-dialog")).to_be_visible()
        audit(tab, axe_source, f"workspace_gateway_dialog_{size}", artifacts_dir)
        tab.keyboard.press("Escape")

        tab.evaluate(f"location.hash = '#/patients/{site.ward.patients['crisis']}?days=14'")
        expect(tab.locator("body")).to_have_attribute("data-view", "patient")
        expect(tab.locator("#patient-gateways .candidate")).to_have_count(2)
        audit(tab, axe_source, f"workspace_patient_gateways_{size}", artifacts_dir, context="#patient-gateways")
        assert errors == []
    finally:
        context.close()
