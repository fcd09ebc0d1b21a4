"""The patient's own page (``/ui/me``, issue 20) in real headless Chromium on a phone (390 x 844) against the real
API over HTTP, real PostgreSQL and the development OpenID provider (cloud.demo.oidc) as the sign-in:

- the patient signs in through the provider (authorization code + PKCE) and sees the latest blood pressure in
  words with its unit, the week's sentence and a chart; no UCUM code anywhere on the page;
- stops sharing with a care team in one step (with a confirm): that team's next API request answers 404;
- shares with another team by its invite code for 30 days; the share ends by itself (its end moved into the
  past by SQL): after a reload it is gone from "who sees my data" and that team's request answers 404;
- reads who looked (the first team's looks and the refused one), paged with "Show older";
- downloads the FHIR ``$everything`` Bundle (valid for fhir.resources' R4B models) and the CSV;
- the printable summary hides the controls; the close-my-account request says what is kept.
axe-core audits the page, the confirm dialog and the print view (tests/a11y/axe.py): no serious or critical
violation. Screenshots: ``tests/artifacts/me_*.png``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.demo.oidc import DevOpenIdProvider, DevUser
from cloud.settings import CloudSettings
from tests.a11y.axe import audit, axe_source  # noqa: F401  (axe_source is a fixture)
from tests.chromium import launched_chromium
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, now, weight
from tests.cloud.api.test_ui_browser import DEV_KEY
from tests.cloud.api.ui_live_server import LiveServer

PHONE = {"width": 390, "height": 844}
PATIENT_ZONE = "Europe/Lisbon"
UCUM_CODES = ("mm[Hg]", "{beats}/min", "[lb_av]", "[degF]", "Cel")
EARLIER_LOOKS = 24  # more than one page (20) of "who looked"


@dataclass
class World:
    api: str
    database_url: str
    provider: DevOpenIdProvider
    patient: str
    north: str
    south: str
    north_token: str
    south_token: str

    def as_team(self, token: str, path: str) -> httpx.Response:
        return httpx.get(f"{self.api}{path}", headers={"Authorization": f"Bearer {token}"}, timeout=20)

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.database_url) as conn:
            return conn.execute(sql, params).fetchall()


def _seed(conn: psycopg.Connection, patient: str, north: str, south: str) -> None:
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Team North'), (%s, 'Heart clinic South')",
                 (north, south))
    devices = add_patient(conn, patient, kinds=("blood_pressure", "body_weight"))
    conn.execute("UPDATE patients SET display_name = 'Alice Example', timezone = %s WHERE id = %s",
                 (PATIENT_ZONE, patient))
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient, north, ["readings", "alerts", "twin"], patient))
    end = now()
    readings = [bp(devices["blood_pressure"], end - timedelta(days=d, hours=2), 146 + d % 3, 91 - d % 2)
                for d in range(20, 0, -1)]
    readings += [weight(devices["body_weight"], end - timedelta(days=d, hours=3), 82.0 + d / 10)
                 for d in range(8, 0, -1)]
    readings.append(bp(devices["blood_pressure"], end - timedelta(minutes=30), 138, 86))
    ingest(conn, readings, patient)


@pytest.fixture
def world(fresh_database_url: str, unique_id: str) -> Iterator[World]:
    patient, north, south = f"{unique_id}-alice", f"{unique_id}-north", f"{unique_id}-south"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        _seed(conn, patient, north, south)
        for team, subject, name in ((north, f"{unique_id}-ada", "Dr Ada"), (south, f"{unique_id}-sam", "Dr Sam")):
            conn.execute("INSERT INTO care_team_members (care_team_id, subject, role, name)"
                         " VALUES (%s, %s, 'clinician', %s)", (team, subject, name))
    alice = DevUser(f"{unique_id}-alice-login", role="patient", patient=patient, name="Alice Example")
    ada = DevUser(f"{unique_id}-ada", role="clinician", care_teams=(north,), name="Dr Ada")
    sam = DevUser(f"{unique_id}-sam", role="clinician", care_teams=(south,), name="Dr Sam")
    with DevOpenIdProvider([alice], audience="rpm-api") as provider:
        settings = CloudSettings(database_url=fresh_database_url, oidc_issuer=provider.issuer, api_pool_max=4)
        with LiveServer(create_app(settings)) as server:
            provider.allow_redirect_uri(f"{server.url}/ui/me")
            yield World(server.url, fresh_database_url, provider, patient, north, south,
                        provider.access_token(ada, ttl_s=1800), provider.access_token(sam, ttl_s=1800))


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium()


@pytest.fixture
def phone(browser: object, world: World) -> Iterator[object]:
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)  # two shared cores: the first answers can take seconds
    context = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2,  # type: ignore[attr-defined]
                                  locale="en-GB", timezone_id="Asia/Kathmandu", accept_downloads=True)
    context.set_default_timeout(15_000)
    tab = context.new_page()
    tab.problems = []
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    # Errors of the page's own code; not those of axe, which the test evaluates (no script URL) and whose inline
    # styles the page's content policy rightly refuses.
    tab.on("console", lambda m: m.type == "error" and m.location.get("url") and "404" not in m.text
           and tab.problems.append(f"console: {m.text} at {m.location}"))
    tab.on("request", lambda r: r.url.startswith((world.api, world.provider.issuer, "blob:", "data:"))
           or tab.problems.append(f"outside request: {r.url}"))
    try:
        yield tab
    finally:
        context.close()


def _signed_in(tab: object, world: World) -> None:

    tab.goto(f"{world.api}/ui/me")  # type: ignore[attr-defined]
    _shown(tab)


def _shown(tab: object) -> None:
    """The page loaded the record (or said why not: the status line is the failure message)."""
    from playwright.sync_api import expect

    expect(tab.locator("body[data-view=me], body[data-view=error], body[data-view=sign-in]")).to_have_count(  # type: ignore[attr-defined]
        1, timeout=30_000)
    assert tab.locator("body").get_attribute("data-view") == "me", tab.locator("main").inner_text()  # type: ignore[attr-defined]


def _no_sideways_scroll(tab: object) -> None:
    assert tab.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # type: ignore[attr-defined]


# --- the shell, no browser -----------------------------------------------------------------------------------

@pytest.mark.unit
def test_the_page_shell_holds_no_patient_data_and_runs_only_its_own_files() -> None:
    shell = TestClient(create_app(CloudSettings(database_url="postgresql://nobody@127.0.0.1:1/none",
                                                jwt_dev_key=DEV_KEY)))
    page = shell.get("/ui/me")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"
    for reference in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert reference.startswith(("/ui/static/", "#", "data:")), reference
    # The sign-in comes back to this page, not to the workspace's.
    assert 'src="/ui/static/auth.js" data-return-path="/ui/me"' in page.text
    for name in ("me.js", "me.css"):
        assert shell.get(f"/ui/static/{name}").status_code == 200


# --- the patient's path --------------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_patient_reads_revokes_shares_and_takes_their_data(phone: object, world: World, artifacts_dir: Path,
                                                             axe_source: str) -> None:  # noqa: F811
    from fhir.resources.R4B.bundle import Bundle
    from playwright.sync_api import expect

    tab = phone
    # Team North looks at the record, more than a page of times: "who looked" has something to page through.
    for _ in range(EARLIER_LOOKS):
        assert world.as_team(world.north_token, f"/v1/patients/{world.patient}/readings?limit=5").status_code == 200

    _signed_in(tab, world)
    assert any(path == "/token" for _, path, _ in world.provider.requests)  # a real code exchange happened
    card = tab.locator("#measure-blood_pressure")  # type: ignore[attr-defined]
    expect(card.locator(".latest .value")).to_have_text("138/86 mmHg")
    expect(card.locator(".sentence")).to_contain_text("blood pressure")
    expect(card.locator(".sentence")).to_contain_text("mmHg")
    expect(card.locator(".badge")).not_to_be_empty()
    chart = card.locator("svg.chart-svg").first
    expect(chart).to_be_visible()
    assert int(chart.get_attribute("data-points")) > 0
    text = tab.locator("body").inner_text()  # type: ignore[attr-defined]
    for code in UCUM_CODES:
        assert code not in text, code
    _no_sideways_scroll(tab)
    tab.screenshot(path=str(artifacts_dir / "me_phone_top.png"))  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "me_phone_full.png"), full_page=True)  # type: ignore[attr-defined]
    card.screenshot(path=str(artifacts_dir / "me_phone_blood_pressure.png"))
    tab.locator("#devices").screenshot(path=str(artifacts_dir / "me_phone_devices.png"))  # type: ignore[attr-defined]
    audit(tab, axe_source, "me_phone", artifacts_dir)

    # 90-day charts: drawn again over the longer window.
    tab.get_by_label("the last 90 days").check()  # type: ignore[attr-defined]
    expect(card.locator(".chart-note").first).to_contain_text("Last 90 days")

    # --- stop sharing with Team North, in one step with a confirm ---
    north = tab.locator(f'#grant-list li[data-care-team="{world.north}"]')  # type: ignore[attr-defined]
    expect(north).to_contain_text("Team North")
    expect(north).to_contain_text("Dr Ada")
    north.get_by_role("button", name="Stop sharing with Team North").click()
    dialog = tab.get_by_role("dialog")  # type: ignore[attr-defined]
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("Stop sharing with Team North?")
    audit(tab, axe_source, "me_confirm_dialog", artifacts_dir)
    tab.screenshot(path=str(artifacts_dir / "me_phone_confirm.png"))  # type: ignore[attr-defined]
    dialog.get_by_role("button", name="Stop sharing").click()
    expect(north).to_have_count(0)
    assert world.as_team(world.north_token, f"/v1/patients/{world.patient}/readings").status_code == 404
    assert world.query("SELECT count(*) FROM consents WHERE patient_id = %s AND care_team_id = %s"
                       " AND revoked_at IS NOT NULL", world.patient, world.north) == [(1,)]

    # --- share with Heart clinic South for 30 days, by its invite code ---
    invite = httpx.post(f"{world.api}/v1/care-teams/{world.south}/invites", json={"expires_in_days": 7},
                        headers={"Authorization": f"Bearer {world.south_token}"}, timeout=20)
    assert invite.status_code == 201, invite.text
    code = invite.json()["code"]
    assert re.fullmatch(r"[0-9A-Z]{4}-[0-9A-Z]{4}", code)
    assert world.as_team(world.south_token, f"/v1/patients/{world.patient}/readings").status_code == 404
    tab.get_by_label("Invite code").fill("WRONG-0000")  # type: ignore[attr-defined]
    tab.get_by_role("button", name="Share my data").click()  # type: ignore[attr-defined]
    expect(tab.locator("#invite-error")).to_be_visible()  # type: ignore[attr-defined]
    expect(tab.get_by_label("Invite code")).to_have_attribute("aria-invalid", "true")  # type: ignore[attr-defined]
    tab.get_by_label("Invite code").fill(code.lower().replace("-", " "))  # type: ignore[attr-defined]
    tab.get_by_label("30 days, then it stops by itself").check()  # type: ignore[attr-defined]
    tab.get_by_role("button", name="Share my data").click()  # type: ignore[attr-defined]
    south = tab.locator(f'#grant-list li[data-care-team="{world.south}"]')  # type: ignore[attr-defined]
    expect(south).to_contain_text("Heart clinic South")
    expect(south).to_contain_text("stops by itself")
    [(expires_at,)] = world.query("SELECT expires_at FROM consents WHERE patient_id = %s AND care_team_id = %s"
                                  " AND revoked_at IS NULL", world.patient, world.south)
    assert abs(expires_at - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=10)
    assert world.as_team(world.south_token, f"/v1/patients/{world.patient}/readings").status_code == 200
    south.scroll_into_view_if_needed()
    tab.screenshot(path=str(artifacts_dir / "me_phone_shared.png"))  # type: ignore[attr-defined]

    # The 30 days pass (moved into the past in the database): after a reload the share is gone by itself.
    world.query("UPDATE consents SET granted_at = now() - interval '30 days 1 minute', expires_at = now() -"
                " interval '1 minute' WHERE patient_id = %s"
                " AND care_team_id = %s RETURNING id", world.patient, world.south)
    tab.reload()  # type: ignore[attr-defined]
    _shown(tab)
    expect(south).to_have_count(0)
    expect(tab.locator("#grants-empty")).to_be_visible()  # type: ignore[attr-defined]
    expect(tab.locator("#past-list")).to_contain_text("Heart clinic South")  # type: ignore[attr-defined]
    assert world.as_team(world.south_token, f"/v1/patients/{world.patient}/readings").status_code == 404

    # --- who looked: Team North's looks, and the refused one after the revocation; paged ---
    log = tab.locator("#log-list li")  # type: ignore[attr-defined]
    expect(log.first).to_be_visible()
    expect(log).to_have_count(20)
    expect(tab.locator("#log-list")).to_contain_text("Dr Ada")  # type: ignore[attr-defined]
    expect(tab.locator("#log-list li.refused").first).to_contain_text("refused")  # type: ignore[attr-defined]
    tab.locator("#log").screenshot(path=str(artifacts_dir / "me_phone_who_looked_first_page.png"))  # type: ignore[attr-defined]
    tab.get_by_role("button", name="Show older").click()  # type: ignore[attr-defined]
    expect(log.nth(20)).to_be_focused()
    assert log.count() > 20
    tab.locator("#log").scroll_into_view_if_needed()  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "me_phone_who_looked.png"))  # type: ignore[attr-defined]

    # --- my data: the FHIR Bundle validates; the CSV opens as a spreadsheet would, without formulas ---
    with tab.expect_download() as got:  # type: ignore[attr-defined]
        tab.get_by_role("button", name="Download everything (FHIR)").click()  # type: ignore[attr-defined]
    bundle = json.loads(Path(got.value.path()).read_text(encoding="utf-8"))
    Bundle.parse_obj(bundle)  # raises on anything R4B does not allow
    kinds = {entry["resource"]["resourceType"] for entry in bundle["entry"]}
    assert {"Patient", "Observation"} <= kinds
    assert got.value.suggested_filename == f"{world.patient}-record.json"
    with tab.expect_download() as got:  # type: ignore[attr-defined]
        tab.get_by_role("button", name="Download my readings (CSV)").click()  # type: ignore[attr-defined]
    rows = list(csv.reader(io.StringIO(Path(got.value.path()).read_text(encoding="utf-8"))))
    assert rows[0][:4] == ["reading_id", "measured_at", "kind", "metric"]
    assert len(rows) > 40 and not any(cell.startswith(("=", "+", "@")) for row in rows for cell in row)

    # --- close my account: the request says what the care team keeps ---
    expect(tab.locator("#closure-pending .kept li").first).to_be_visible()  # said before asking  # type: ignore[attr-defined]
    tab.get_by_role("button", name="Ask to close my account").click()  # type: ignore[attr-defined]
    dialog.get_by_role("button", name="Ask to close").click()
    expect(tab.locator("#closure-pending .notice")).to_contain_text("You asked to close")  # type: ignore[attr-defined]
    expect(tab.get_by_role("button", name="Ask to close my account")).to_be_hidden()  # type: ignore[attr-defined]
    assert world.query("SELECT status FROM closure_requests WHERE patient_id = %s", world.patient) == [("pending",)]
    audit(tab, axe_source, "me_phone_after_actions", artifacts_dir)

    # --- the printable summary: readings and who sees them, no controls ---
    tab.emulate_media(media="print")  # type: ignore[attr-defined]
    expect(card.locator(".latest .value")).to_be_visible()
    for hidden in ("#invite-form", "#data", ".site-header", "#log"):
        expect(tab.locator(hidden)).to_be_hidden()  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "me_print.png"), full_page=True)  # type: ignore[attr-defined]
    tab.emulate_media(media="screen")  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_the_page_is_keyboard_usable(phone: object, world: World) -> None:
    """Tab reaches the section links, the period choice, the invite form and each stop-sharing button; Escape
    closes the confirm dialog without revoking and gives focus back to the button."""
    from playwright.sync_api import expect

    tab = phone
    _signed_in(tab, world)
    reached: list[str] = []
    for _ in range(60):
        tab.keyboard.press("Tab")  # type: ignore[attr-defined]
        reached.append(tab.evaluate("document.activeElement.textContent.trim() || document.activeElement.id"))  # type: ignore[attr-defined]
        if reached[-1] == "Stop sharing with Team North":
            break
    assert "Skip to content" in reached and "Who sees my data" in reached
    assert reached[-1] == "Stop sharing with Team North", reached
    tab.keyboard.press("Enter")  # type: ignore[attr-defined]
    expect(tab.get_by_role("dialog")).to_be_visible()  # type: ignore[attr-defined]
    expect(tab.get_by_role("button", name="Cancel")).to_be_focused()  # type: ignore[attr-defined]
    tab.keyboard.press("Escape")  # type: ignore[attr-defined]
    expect(tab.get_by_role("dialog")).to_be_hidden()  # type: ignore[attr-defined]
    expect(tab.get_by_role("button", name="Stop sharing with Team North")).to_be_focused()  # type: ignore[attr-defined]
    assert world.as_team(world.north_token, f"/v1/patients/{world.patient}/readings").status_code == 200
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_first_time_link_signs_the_patient_in_once(browser: object, fresh_database_url: str, unique_id: str) -> None:
    """Without an account yet (an API that signs its own tokens): the care team's link opens the record once and
    leaves the address bar; the same link again says it was used."""
    from playwright.sync_api import expect

    patient, north = f"{unique_id}-alice", f"{unique_id}-north"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        _seed(conn, patient, north, f"{unique_id}-south")
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)
    dr = mint_token(settings, role="clinician", sub=f"{unique_id}-ada", care_teams=(north,))
    with LiveServer(create_app(settings.model_copy(update={"public_url": "http://placeholder"}))) as server:
        made = httpx.post(f"{server.url}/v1/patients/{patient}/first-time-links", json={}, timeout=20,
                          headers={"Authorization": f"Bearer {dr}"})
        assert made.status_code == 201, made.text
        link = made.json()["url"].replace("http://placeholder", server.url)
        context = browser.new_context(viewport=PHONE, is_mobile=True)  # type: ignore[attr-defined]
        try:
            tab = context.new_page()
            tab.goto(link)
            _shown(tab)
            expect(tab.locator("#measure-blood_pressure .latest .value")).to_have_text("138/86 mmHg")
            assert "first-time" not in tab.url
            again = context.new_page()  # a new tab: nothing kept from the first
            again.goto(link)
            expect(again.locator("#sign-in-error")).to_contain_text("already used")
        finally:
            context.close()
