"""The printable month-end report (/ui/report) in real headless Chromium against the real API: the table shows
each patient's period, days and codes; a screenshot and an A4-landscape PDF go to tests/artifacts/."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.cloud.alerts.scripted_patient import add_patient, bp, insert_readings
from tests.cloud.api.test_ui_browser import BROWSER_ZONE, DEV_KEY
from tests.cloud.api.ui_live_server import LiveServer

pytestmark = pytest.mark.integration
NY = ZoneInfo("America/New_York")


@pytest.fixture
def served(fresh_database_url: str) -> Iterator[tuple[str, str, str]]:
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)
    team = f"t{uuid.uuid4().hex[:8]}"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Heart failure RPM')", (team,))
        for i, (name, days, minutes) in enumerate((("Ana Ribeiro", 15, 19), ("Ben Okafor", 16, 20),
                                                  ("Chloe Martin", 22, 40), ("Dara Walsh", 3, 0))):
            patient = f"{team}-{i}"
            devices = add_patient(conn, patient)
            conn.execute("UPDATE patients SET display_name = %s, timezone = 'America/New_York' WHERE id = %s",
                         (name, patient))
            conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                         (patient, team, ["readings"], patient))
            conn.execute("INSERT INTO programme_enrolments (patient_id, programme_id, enrolled_on, created_by)"
                         " VALUES (%s, 'us-cms-2026', '2026-10-05', 'test')", (patient,))
            insert_readings(conn, [bp(devices["blood_pressure"], datetime(2026, 10, 5 + d, 8, tzinfo=NY), 120, 80)
                                   for d in range(days)], patient)
            if minutes:
                conn.execute("INSERT INTO time_entries (patient_id, person, role, reason, interactive, performed_on,"
                             " minutes) VALUES (%s, 'nurse-kim', 'care_team', 'call', true, %s, %s)",
                             (patient, date(2026, 11, 10), minutes))
    token = mint_token(settings, role="clinician", sub="dr-lee", care_teams=(team,), ttl_s=900)
    with LiveServer(create_app(settings)) as server:
        yield server.url, team, token


def test_the_printable_report_shows_each_patients_codes(served: tuple[str, str, str], artifacts_dir: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright drives Chromium")
    url, team, token = served
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(timezone_id=BROWSER_ZONE, viewport={"width": 1280, "height": 800})
            tab = context.new_page()
            problems: list[str] = []
            tab.on("pageerror", lambda e: problems.append(str(e)))
            tab.goto(f"{url}/ui/report?team={team}&month=2026-11#token={token}")
            sync_api.expect(tab.locator("body")).to_have_attribute("data-state", "ready", timeout=10_000)
            rows = tab.locator("#report-table tbody tr")
            assert rows.count() == 4
            text = {r.get_attribute("data-patient-id"): r.inner_text() for r in rows.all()}
            assert "99445" in text[f"{team}-0"] and "99470" in text[f"{team}-0"]
            assert "99454" in text[f"{team}-1"] and "99457" in text[f"{team}-1"]
            assert "99458" in text[f"{team}-2"]
            assert token not in tab.url  # the token left the address bar
            tab.screenshot(path=str(artifacts_dir / "programme_report.png"), full_page=True)
            tab.emulate_media(media="print")
            tab.pdf(path=str(artifacts_dir / "programme_report.pdf"), format="A4", landscape=True)
            assert not problems, problems
        finally:
            browser.close()
