"""The care team's programme block (issue 25) in real headless Chromium against the real API over HTTP and real
PostgreSQL: the panel row says what the current period still needs; on the patient page a clinician starts the
timer, stops it and sees the minutes, adds minutes with the form, and sees this month's total and the management
code it meets; every write is in the audit log. Screenshot: ``tests/artifacts/programme_patient_time.png``.

The timer's seven minutes are made by moving its start back in the database (the test cannot wait seven real
minutes): the server still computes the minutes itself, from its own clock, when the page stops the timer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from tests.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest
from tests.cloud.api.test_ui_browser import BROWSER_ZONE, DEV_KEY
from tests.cloud.api.ui_live_server import LiveServer

pytestmark = pytest.mark.integration
ZONE = "America/New_York"
READING_DAYS = 6  # of the 10 days since set-up (none today): needs 10 more in the 20 days left


@dataclass
class Served:
    url: str
    database_url: str
    patient: str
    clinician: str
    token: str


@pytest.fixture
def served(fresh_database_url: str) -> Iterator[Served]:
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    team, patient, clinician = f"{prefix}-team", f"{prefix}-ana", f"{prefix}-dr"
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Heart failure RPM')", (team,))
        devices = add_patient(conn, patient)
        conn.execute("UPDATE patients SET display_name = 'Ana Ribeiro', timezone = %s WHERE id = %s", (ZONE, patient))
        conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                     (patient, team, ["readings", "alerts"], patient))
        row = conn.execute("SELECT (now() AT TIME ZONE %s)::date", (ZONE,)).fetchone()
        assert row is not None
        enrolled = row[0] - timedelta(days=10)
        conn.execute("INSERT INTO programme_enrolments (patient_id, programme_id, enrolled_on, created_by)"
                     " VALUES (%s, 'us-cms-2026', %s, 'test')", (patient, enrolled))
        ingest(conn, [bp(devices["blood_pressure"], datetime.combine(enrolled + timedelta(days=d), time(9),
                                                                        ZoneInfo(ZONE)), 128, 81)
                      for d in range(READING_DAYS)], patient)
    token = mint_token(settings, role="clinician", sub=clinician, care_teams=(team,), ttl_s=900)
    with LiveServer(create_app(settings)) as server:
        yield Served(server.url, fresh_database_url, patient, clinician, token)


def test_a_clinician_times_their_work_and_sees_this_months_minutes_and_codes(served: Served,
                                                                            artifacts_dir: Path) -> None:
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright drives Chromium")
    expect = sync_api.expect
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = browser.new_context(timezone_id=BROWSER_ZONE, locale="en-GB",
                                          viewport={"width": 1280, "height": 900})
            context.set_default_timeout(10_000)
            tab = context.new_page()
            problems: list[str] = []
            tab.on("pageerror", lambda e: problems.append(str(e)))
            tab.on("console", lambda m: m.type == "error" and problems.append(f"console: {m.text}"))

            # The panel row: what this period still needs, in words.
            tab.goto(f"{served.url}/ui#token={served.token}")
            expect(tab.locator("body")).to_have_attribute("data-view", "panel")
            row = tab.locator(f'#panel-table tbody tr[data-patient-id="{served.patient}"]')
            expect(row.locator("[data-programme]")).to_have_text("! needs 10 readings in the next 20 days")
            tab.screenshot(path=str(artifacts_dir / "programme_panel.png"))

            # The patient page: start the timer (a call with the patient).
            row.locator("a").click()
            expect(tab.locator("body")).to_have_attribute("data-view", "patient")
            block = tab.locator("#programme-time")
            expect(block.locator("#programme-minutes")).to_have_text("0 minutes in 0 activities")
            expect(block.locator("#programme-period")).to_contain_text(f"{READING_DAYS} days with data")
            block.locator("#programme-timer-reason").select_option("call")
            block.locator('#programme-timer-start input[name="start-interactive"][value="yes"]').check()
            block.get_by_role("button", name="Start timer").click()
            expect(block.locator("#programme-timer-running")).to_contain_text("Timer running (Call)")
            expect(block.locator("#programme-time-status")).to_have_text("Timer started.")

            # Seven minutes pass (the start moved back), then the clinician stops it.
            with psycopg.connect(served.database_url, autocommit=True) as conn:
                moved = conn.execute("UPDATE time_entries SET started_at = started_at - interval '7 min 5 s'"
                                     " WHERE patient_id = %s AND person = %s AND minutes IS NULL",
                                     (served.patient, served.clinician)).rowcount
            assert moved == 1
            block.get_by_role("button", name="Stop timer").click()
            expect(block.locator("#programme-minutes")).to_have_text("7 minutes in 1 activity")
            expect(block.locator("#programme-activities tbody tr")).to_have_count(1)
            expect(block.locator("#programme-activities tbody tr td").nth(3)).to_have_text("7")
            expect(block.locator("#programme-codes")).to_have_text(
                "7 minutes: below every management code's minimum")
            expect(block.get_by_role("button", name="Start timer")).to_be_visible()

            # Thirteen more minutes of data review, not interactive: 20 in the month -> 99457.
            block.locator("#programme-minutes-input").fill("13")
            block.locator("#programme-minutes-reason").select_option("data_review")
            block.locator('#programme-add-minutes input[name="minutes-interactive"][value="no"]').check()
            block.get_by_role("button", name="Add minutes").click()
            expect(block.locator("#programme-minutes")).to_have_text("20 minutes in 2 activities")
            expect(block.locator("#programme-codes")).to_have_text("99457")
            expect(block.locator("#programme-time-status")).to_have_text("Minutes added.")
            block.scroll_into_view_if_needed()
            tab.screenshot(path=str(artifacts_dir / "programme_patient_time.png"), full_page=True)
            tab.set_viewport_size({"width": 360, "height": 780})  # a phone: the block wraps, nothing sideways
            expect(block.locator("#programme-activities tbody tr")).to_have_count(2)
            assert tab.evaluate("document.documentElement.scrollWidth") <= 360
            assert not problems, problems
        finally:
            browser.close()
    with psycopg.connect(served.database_url) as conn:
        entries = conn.execute("SELECT reason, minutes, interactive, person FROM time_entries WHERE patient_id = %s"
                               " ORDER BY id", (served.patient,)).fetchall()
        audited = conn.execute("SELECT detail -> 'time_entry' ->> 'timer', (detail -> 'time_entry' ->> 'minutes')::int"
                               " FROM audit_log WHERE action LIKE 'POST %%time-entries' AND %s = ANY(patient_ids)"
                               " AND detail -> 'time_entry' ? 'id' ORDER BY id", (served.patient,)).fetchall()
    assert entries == [("call", 7, True, served.clinician), ("data_review", 13, False, served.clinician)]
    assert audited == [("start", None), ("stop", 7), (None, 13)]
