"""The clinician page ``/ui`` in real headless Chromium (Debian's ``chromium``) against the real API over HTTP
and a real PostgreSQL database: the panel in triage order, charts with their data points and the glucose
target band, a patient's times in the patient's zone (not the browser's), acknowledging an alert lands in the
database; screenshots are
written to ``tests/artifacts/ui_*.png``. The shell's own route (headers, file serving) is checked without a
browser.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import psycopg
import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from tests.chromium import launched_chromium
from tests.cloud.api.ui_live_server import (
    LiveServer,
    Ward,
    seed_continuous_glucose,
    seed_readings_only_patient,
    seed_ward,
)
from tests.waiting import wait_until

DEV_KEY = "ui-test-dev-key-not-secret-0123456789"
BROWSER_ZONE = "Asia/Kathmandu"  # UTC+05:45: a shifted hour *and* minute show the page converts, not copies
PATIENT_ZONE = "America/Denver"  # the crisis patient's own zone: the patient page shows times in it


# --- the shell's route, no browser ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def shell() -> TestClient:
    # No lifespan (no `with`): the shell and its files must not need the database.
    return TestClient(create_app(CloudSettings(database_url="postgresql://nobody@127.0.0.1:1/none",
                                               jwt_dev_key=DEV_KEY)))


@pytest.mark.unit
def test_page_is_served_without_a_token_with_a_strict_content_policy(shell: TestClient) -> None:
    response = shell.get("/ui")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy and "script-src 'self'" in policy
    assert response.headers["x-content-type-options"] == "nosniff"
    # Everything the page loads is its own: no CDN, no other origin.
    for reference in re.findall(r'(?:src|href)="([^"]+)"', response.text):
        assert reference.startswith(("/ui/static/", "#", "data:")), reference
    assert shell.get("/ui/", follow_redirects=False).headers["location"] == "/ui"


@pytest.mark.unit
def test_static_files_have_their_types_and_only_files_of_the_folder_are_served(shell: TestClient) -> None:
    script = shell.get("/ui/static/ui.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert shell.get("/ui/static/ui.css").headers["content-type"].startswith("text/css")
    for name in ("missing.js", "..%2Fapp.py", "%2E%2E%2Froutes%2Fui.py", "index.html%00", "ui.py"):
        response = shell.get(f"/ui/static/{name}")
        assert response.status_code in (400, 404), name
        assert "problem+json" in response.headers["content-type"]
    assert shell.get("/ui/static/../app.py").status_code == 404


@pytest.mark.unit
def test_metric_catalogue_gives_the_units_the_api_stores(shell: TestClient) -> None:
    catalogue = shell.get("/ui/metrics.json").json()
    assert catalogue["systolic"]["unit"] == "mm[Hg]"
    assert catalogue["glucose"]["unit"] == "mg/dL"
    assert catalogue["body_weight"]["unit"] == "kg"


@pytest.mark.unit
def test_ui_routes_stay_out_of_the_openapi_document(shell: TestClient) -> None:
    assert not [path for path in shell.get("/openapi.json").json()["paths"] if path.startswith("/ui")]


# --- the page in Chromium ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium()


@dataclass
class LiveApi:
    url: str
    database_url: str
    ward: Ward
    clinician: str
    token: str


@pytest.fixture
def live_api(fresh_database_url: str, unique_id: str) -> Iterator[LiveApi]:
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        ward = seed_ward(conn, unique_id)
    clinician = f"{unique_id}-dr"
    token = mint_token(settings, role="clinician", sub=clinician, care_teams=(ward.team,), ttl_s=900)
    with LiveServer(create_app(settings)) as server:
        yield LiveApi(server.url, fresh_database_url, ward, clinician, token)


@pytest.fixture
def page(browser: object, live_api: LiveApi) -> Iterator[object]:
    context = browser.new_context(timezone_id=BROWSER_ZONE, locale="en-GB",  # type: ignore[attr-defined]
                                  viewport={"width": 1280, "height": 900})
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.problems = []  # type: ignore[attr-defined]
    tab.on("console", lambda m: m.type == "error" and tab.problems.append(f"console: {m.text}"))
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    # Nothing may be fetched from anywhere but the API's own origin.
    tab.on("request", lambda r: r.url.startswith(live_api.url) or tab.problems.append(f"outside request: {r.url}"))
    try:
        yield tab
    finally:
        context.close()


def local_text(instant: datetime, zone: str = BROWSER_ZONE) -> str:
    return instant.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d %H:%M")


def alert_row(database_url: str, patient_id: str) -> dict:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT id, status, severity, opened_at, acknowledged_by FROM alerts"
                           " WHERE patient_id = %s AND status <> 'resolved' ORDER BY id", (patient_id,)).fetchone()
    assert row is not None, f"no open alert for {patient_id}"
    return dict(zip(("id", "status", "severity", "opened_at", "acknowledged_by"), row, strict=True))


@pytest.mark.integration
def test_clinician_triages_sees_charts_and_acknowledges_an_alert(page: object, live_api: LiveApi,
                                                                   artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    ward, tab = live_api.ward, page
    with psycopg.connect(live_api.database_url, autocommit=True) as conn:
        conn.execute("UPDATE patients SET timezone = %s WHERE id = %s", (PATIENT_ZONE, ward.patients["crisis"]))
    tab.goto(f"{live_api.url}/ui#token={live_api.token}")  # type: ignore[attr-defined]

    # The panel: this team's patients only, in triage order (critical, warning, then fewest reading days).
    rows = tab.locator("#panel-table tbody tr")  # type: ignore[attr-defined]
    expect(rows).to_have_count(len(ward.expected_order))
    assert [rows.nth(i).get_attribute("data-patient-id") for i in range(rows.count())] == ward.expected_order
    crisis, hyper = ward.patients["crisis"], ward.patients["hyper"]
    expect(rows.nth(0).locator(".badge")).to_have_text("Critical: 1")
    expect(rows.nth(1).locator(".badge")).to_have_text("Warning: 1")
    expect(rows.nth(0)).to_contain_text("190/125 mmHg")
    expect(rows.nth(1)).to_contain_text("300 mg/dL")
    expect(rows.nth(3)).to_contain_text(f"{ward.reading_days[ward.patients['steady']]} of 30 days")
    # A name holding markup is shown as text, never run or parsed.
    expect(rows.nth(3).locator("a")).to_have_text(ward.hostile_name)
    assert rows.nth(3).locator("img").count() == 0 and tab.evaluate("window.pwned") is None  # type: ignore[attr-defined]
    # The token left the address bar (and so the history) as soon as it was read.
    assert "token" not in tab.url  # type: ignore[attr-defined]
    assert tab.evaluate("sessionStorage.getItem('rpm.token')") == live_api.token  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "ui_panel.png"), full_page=True)  # type: ignore[attr-defined]

    # One patient: keyboard to the patient's link, charts with every stored reading as a point.
    tab.locator(f'tr[data-patient-id="{crisis}"] a').focus()  # type: ignore[attr-defined]
    tab.keyboard.press("Enter")  # type: ignore[attr-defined]
    expect(tab.locator("body")).to_have_attribute("data-view", "patient")  # type: ignore[attr-defined]
    expect(tab.locator("#patient-title")).to_have_text(f"Patient {crisis}")  # type: ignore[attr-defined]
    counts = ward.readings[crisis]
    bp_chart = tab.locator("#chart-bp svg.chart-svg")  # type: ignore[attr-defined]
    expect(bp_chart.locator(".series[data-series=Systolic] .point")).to_have_count(counts["blood_pressure"])
    expect(bp_chart.locator(".series[data-series=Diastolic] .point")).to_have_count(counts["blood_pressure"])
    expect(tab.locator("#chart-bp figcaption")).to_have_text("Blood pressure (mmHg)")  # type: ignore[attr-defined]
    glucose_chart = tab.locator("#chart-glucose svg.chart-svg")  # type: ignore[attr-defined]
    expect(glucose_chart.locator(".point")).to_have_count(counts["glucose"])
    band = glucose_chart.locator("rect.target-band")
    expect(band).to_have_count(1)
    assert (band.get_attribute("data-low"), band.get_attribute("data-high")) == ("70", "180")
    expect(tab.locator("#chart-glucose figcaption")).to_have_text("Glucose (mg/dL)")  # type: ignore[attr-defined]
    expect(tab.locator("#chart-weight svg.chart-svg .point")).to_have_count(counts["body_weight"])  # type: ignore[attr-defined]
    # No oximeter, no thermometer: no empty charts for them.
    expect(tab.locator("#chart-spo2")).to_be_hidden()  # type: ignore[attr-defined]
    expect(tab.locator("#chart-temperature")).to_be_hidden()  # type: ignore[attr-defined]
    # The point for 190 mmHg sits above every other systolic point (SVG y grows downwards).
    ys = [float(v) for v in bp_chart.locator(".series[data-series=Systolic] .point").evaluate_all(
        "nodes => nodes.map(n => n.getAttribute('cy'))")]
    assert min(ys) == ys[-1] and ys.count(ys[-1]) == 1
    tab.locator("#chart-bp details summary").click()  # type: ignore[attr-defined]
    expect(tab.locator("#chart-bp details tbody tr").first).to_contain_text("190")  # type: ignore[attr-defined]

    # The open alert, with its reading's time in the patient's zone (Denver; the browser is in Kathmandu), and
    # the Acknowledge button.
    alert = alert_row(live_api.database_url, crisis)
    assert (alert["severity"], alert["status"]) == ("critical", "open")
    item = tab.locator(f'#alert-list li[data-alert-id="{alert["id"]}"]')  # type: ignore[attr-defined]
    expect(item).to_have_attribute("data-status", "open")
    with psycopg.connect(live_api.database_url) as conn:
        [(measured_at,)] = conn.execute("SELECT measured_at FROM alerts WHERE id = %s", (alert["id"],)).fetchall()
    expect(item.locator(".when").first).to_contain_text(f"Reading {local_text(measured_at, PATIENT_ZONE)}")
    tab.screenshot(path=str(artifacts_dir / "ui_patient_before_ack.png"), full_page=True)  # type: ignore[attr-defined]
    item.get_by_role("button", name="Acknowledge").click()

    expect(tab.locator(f'#alert-list li[data-alert-id="{alert["id"]}"]')).to_have_attribute(  # type: ignore[attr-defined]
        "data-status", "acknowledged")
    expect(tab.locator("#status")).to_contain_text("Alert acknowledged")  # type: ignore[attr-defined]
    stored = wait_until(lambda: (row := alert_row(live_api.database_url, crisis))["status"] == "acknowledged" and row,
                        10, "the acknowledgement in the database")
    assert stored["acknowledged_by"] == live_api.clinician  # type: ignore[index]
    assert alert_row(live_api.database_url, hyper)["status"] == "open"  # only the one clicked
    expect(tab.locator("#alert-list button.acknowledge")).to_have_count(0)  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "ui_patient.png"), full_page=True)  # type: ignore[attr-defined]

    # Back to the panel through history; the page never fetched from elsewhere nor logged an error.
    tab.go_back()  # type: ignore[attr-defined]
    expect(tab.locator("body")).to_have_attribute("data-view", "panel")  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_sign_in_refuses_a_bad_token_then_accepts_a_pasted_one(page: object, live_api: LiveApi) -> None:
    from playwright.sync_api import expect

    tab = page
    tab.goto(f"{live_api.url}/ui")  # type: ignore[attr-defined]
    expect(tab.locator("#sign-in")).to_be_visible()  # type: ignore[attr-defined]
    field = tab.get_by_label("Bearer token")  # type: ignore[attr-defined]
    field.fill("not-a-token")
    tab.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
    expect(tab.locator("#sign-in-error")).to_contain_text("Signed out")  # type: ignore[attr-defined]
    assert tab.evaluate("sessionStorage.getItem('rpm.token')") is None  # type: ignore[attr-defined]

    field.fill(live_api.token)
    tab.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
    expect(tab.locator("#panel-table tbody tr")).to_have_count(len(live_api.ward.expected_order))  # type: ignore[attr-defined]
    stranger = live_api.ward.patients["stranger"]
    expect(tab.locator(f'tr[data-patient-id="{stranger}"]')).to_have_count(0)  # type: ignore[attr-defined]
    # A patient not shared with the team reads as not found, like the API answers.
    tab.goto(f"{live_api.url}/ui#/patients/{stranger}")  # type: ignore[attr-defined]
    expect(tab.locator("#status")).to_contain_text("No such patient")  # type: ignore[attr-defined]
    # The 401 console line is the browser reporting the refused token; nothing else may appear.
    assert [p for p in tab.problems if "401" not in p and "404" not in p] == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_dense_glucose_is_drawn_as_daily_means_and_the_period_can_change(page: object, live_api: LiveApi,
                                                                          artifacts_dir: Path) -> None:
    """More readings than one page (1000) in the period: the chart asks the trends endpoint for daily means
    instead, one point per local day of the patient (UTC here), each with its day's range."""
    from playwright.sync_api import expect

    tab, cgm = page, f"{live_api.ward.team}-cgm"
    with psycopg.connect(live_api.database_url, autocommit=True) as conn:
        stored = seed_continuous_glucose(conn, cgm, live_api.ward.team, 1200)
    spread: dict[object, set[float]] = {}  # values per UTC day
    for r in stored:
        spread.setdefault(r.measured_at.astimezone(ZoneInfo("UTC")).date(), set()).add(r.values["glucose"].value)
    # A day with one value (the oldest can hold a single reading, depending on the hour) gets no whisker.
    whiskered = sum(1 for values in spread.values() if len(values) > 1)
    tab.goto(f"{live_api.url}/ui#token={live_api.token}")  # type: ignore[attr-defined]
    expect(tab.locator(f'tr[data-patient-id="{cgm}"]')).to_have_count(1)  # type: ignore[attr-defined]
    tab.locator(f'tr[data-patient-id="{cgm}"] a').click()  # type: ignore[attr-defined]
    chart = tab.locator("#chart-glucose")  # type: ignore[attr-defined]
    expect(chart.locator(".chart-note")).to_contain_text("Daily means (bars: lowest to highest) of 1200 readings")
    expect(chart.locator("svg .point")).to_have_count(len(spread))
    assert chart.locator("svg .whisker").count() == whiskered
    # 90..209 mg/dL in every day: the whiskers reach both sides of the 180 mg/dL target edge.
    expect(chart.locator("svg rect.target-band")).to_have_count(1)
    tab.screenshot(path=str(artifacts_dir / "ui_dense_glucose.png"), full_page=True)  # type: ignore[attr-defined]

    # The steady patient has readings on each of the last 20 days: 14 days shows the last 13 of them.
    steady = live_api.ward.patients["steady"]
    tab.goto(f"{live_api.url}/ui#/patients/{steady}")  # type: ignore[attr-defined]
    weight = tab.locator("#chart-weight svg .point")  # type: ignore[attr-defined]
    expect(weight).to_have_count(20)
    tab.get_by_label("Period").select_option("14")  # type: ignore[attr-defined]
    expect(weight).to_have_count(13)
    expect(tab.locator("#chart-bp .chart-note")).to_contain_text("13 readings")  # type: ignore[attr-defined]
    assert "days=14" in tab.url  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_patient_sharing_readings_only_shows_charts_but_no_alerts(page: object, live_api: LiveApi) -> None:
    from playwright.sync_api import expect

    tab, private = page, f"{live_api.ward.team}-private"
    with psycopg.connect(live_api.database_url, autocommit=True) as conn:
        seed_readings_only_patient(conn, private, live_api.ward.team)
    assert alert_row(live_api.database_url, private)["severity"] == "critical"  # it exists, and stays hidden
    tab.goto(f"{live_api.url}/ui#token={live_api.token}")  # type: ignore[attr-defined]
    row = tab.locator(f'tr[data-patient-id="{private}"]')  # type: ignore[attr-defined]
    expect(row).to_contain_text("not shared")
    expect(row).to_contain_text("185/100 mmHg")
    expect(row.locator(".badge")).to_have_count(0)
    row.locator("a").click()
    expect(tab.locator("#alerts-empty")).to_have_text(  # type: ignore[attr-defined]
        "This patient has not shared alerts with your care team.")
    expect(tab.locator("#alert-list li")).to_have_count(0)  # type: ignore[attr-defined]
    expect(tab.locator("#chart-bp svg .point")).to_have_count(2)  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_oximetry_and_temperature_charts_show_for_the_patient_who_measures_them(page: object, live_api: LiveApi,
                                                                               artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab, sparse = page, live_api.ward.patients["sparse"]
    tab.goto(f"{live_api.url}/ui#token={live_api.token}")  # type: ignore[attr-defined]
    tab.locator(f'tr[data-patient-id="{sparse}"] a').click()  # type: ignore[attr-defined]
    expect(tab.locator("body")).to_have_attribute("data-view", "patient")  # type: ignore[attr-defined]
    spo2 = tab.locator("#chart-spo2")  # type: ignore[attr-defined]
    expect(spo2).to_be_visible()
    expect(spo2.locator("figcaption")).to_have_text("Oxygen saturation (%)")
    expect(spo2.locator("svg.chart-svg .point")).to_have_count(live_api.ward.readings[sparse]["spo2"])
    band = spo2.locator("rect.target-band")
    assert (band.get_attribute("data-low"), band.get_attribute("data-high")) == ("94", "98")
    temperature = tab.locator("#chart-temperature")  # type: ignore[attr-defined]
    expect(temperature).to_be_visible()
    expect(temperature.locator("figcaption")).to_have_text("Body temperature (°C)")
    temperatures = live_api.ward.readings[sparse]["body_temperature"]
    expect(temperature.locator("svg.chart-svg .point")).to_have_count(temperatures)
    tab.screenshot(path=str(artifacts_dir / "ui_patient_oximetry.png"), full_page=True)  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]
