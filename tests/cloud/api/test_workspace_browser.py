"""The care-team workspace (``/ui``) in real headless Chromium against the real API and PostgreSQL, with a
team of 200+ patients: find a patient by name in one step, filter to unacknowledged critical, acknowledge from
the inbox and see the panel change, a crisis that resolved before review waits in the inbox, the AGP with its
five percentile curves, a print view that fits A4 and Letter, cards on a phone, an alert arriving live, a
message's deep link. Screenshots and PDFs go to ``tests/artifacts/workspace_*``.

The four ward patients (tests.cloud.api.ui_live_server.seed_ward) and the few added here get their readings and
alerts through ingest's own code; the 200 others are loaded with COPY (patients, consents, twins), as the
panel benchmark does, so seeding takes a fraction of a second.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from psycopg.types.json import Jsonb

from cloud.alerts.channels.links import create_link
from cloud.api.app import create_app
from cloud.api.tokens import mint_token
from cloud.settings import CloudSettings
from cloud.twin.state import apply_events, empty_state
from tests.chromium import launched_chromium
from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, make_reading, now
from tests.cloud.api.test_ui_browser import BROWSER_ZONE, DEV_KEY
from tests.cloud.api.ui_live_server import LiveServer, Ward, seed_ward
from tests.waiting import wait_until

FILLERS = 210
NEEDLE = "Margarethe Quist"  # one filler's name: the patient the search must find
ACKNOWLEDGED_CRITICAL = 6  # fillers with a critical alert someone already acknowledged
DASH = "\u2013"  # the en dash the page writes ranges with ("1 to 50 of 612")
MM_PER_PX = 25.4 / 96  # CSS pixels are 1/96 inch
# The printable width of each paper at the print stylesheet's 12 mm margins, in CSS pixels.
PRINT_WIDTHS = {"A4": round((210 - 24) / MM_PER_PX), "Letter": round((215.9 - 24) / MM_PER_PX)}


@dataclass
class Workspace:
    url: str
    database_url: str
    ward: Ward
    team: str
    clinician: str
    token: str
    resolved: str
    """A patient whose crisis opened and resolved inside one sync, before anyone looked."""
    cgm: str
    """A patient with two weeks of continuous glucose (every 15 min): the AGP."""
    fillers: list[str]


def _seed_fillers(conn: psycopg.Connection, prefix: str, team: str) -> list[str]:
    """FILLERS patients in one transaction of COPYs: name, consent, a twin with 20 days of vitals."""
    day = now().replace(minute=0, second=0, microsecond=0)
    template = apply_events(empty_state("template"), [
        ("reading_added", {"reading_id": f"r{d}-{k}", "measured_at": (day - timedelta(days=d, hours=k)).isoformat(),
                           "device_uid": f"dev-{k}", "values": values, "units": units, "flags": []})
        for d in range(20, 0, -1)
        for k, (values, units) in enumerate([
            ({"systolic": 126 + d % 5, "diastolic": 80, "pulse_rate": 68},
             {"systolic": "mm[Hg]", "diastolic": "mm[Hg]", "pulse_rate": "/min"}),
            ({"body_weight": 78.0 + d / 20}, {"body_weight": "kg"})])
    ])
    ids = [f"{prefix}-f{i:03d}" for i in range(FILLERS)]
    surnames = ("Abbott", "Baptiste", "Castillo", "Dunmore", "Eriksen", "Fontaine", "Grunwald", "Hallett", "Ibsen",
                "Jovanovic", "Kowalczyk", "Lindqvist", "Moreau", "Nakamura", "Okafor", "Petrov", "Ramos", "Sato")
    names = [f"{surnames[i % len(surnames)]} {i:03d}" for i in range(FILLERS)]
    names[137] = NEEDLE
    with conn.transaction(), conn.cursor() as cur:
        with cur.copy("COPY patients (id, display_name, sex, birth_date) FROM STDIN") as rows:
            for patient_id, name in zip(ids, names, strict=True):
                rows.write_row((patient_id, name, "male", "1948-06-01"))
        with cur.copy("COPY consents (patient_id, care_team_id, scopes, granted_by) FROM STDIN") as rows:
            for patient_id in ids:
                rows.write_row((patient_id, team, ["readings", "alerts", "twin"], patient_id))
        with cur.copy("COPY twins (patient_id, version, state) FROM STDIN") as rows:
            for patient_id in ids:
                state = copy.deepcopy(template)
                state["patient_id"] = patient_id
                rows.write_row((patient_id, 40, Jsonb(state)))
        # Critical alerts already acknowledged (and so reviewed): not what "unacknowledged critical" must show.
        cur.executemany(
            "INSERT INTO alerts (patient_id, rule_id, severity, status, message, acknowledged_at, acknowledged_by,"
            " reviewed_at, reviewed_by) VALUES (%s, 'bp_crisis', 'critical', 'acknowledged',"
            " 'Hypertensive crisis: systolic 184 mm[Hg]', now(), 'dr.other', now(), 'dr.other')",
            [(p,) for p in ids[:ACKNOWLEDGED_CRITICAL]])
    return ids


def _seed_resolved_crisis(conn: psycopg.Connection, patient_id: str, team: str) -> None:
    """192/110 mmHg, then two normal readings (bp_crisis resolves after 2): resolved, nobody looked."""
    devices = add_patient(conn, patient_id, kinds=("blood_pressure",))
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient_id, team, ["readings", "alerts", "twin"], patient_id))
    end = now()
    ingest(conn, [bp(devices["blood_pressure"], end - timedelta(minutes=50), 192, 110)], patient_id)
    ingest(conn, [bp(devices["blood_pressure"], end - timedelta(minutes=45), 132, 84),
                  bp(devices["blood_pressure"], end - timedelta(minutes=40), 128, 82)], patient_id)


def _seed_cgm(conn: psycopg.Connection, patient_id: str, team: str) -> None:
    """14 days of glucose every 15 min with a daily shape (high after meals, low before dawn) and spread."""
    devices = add_patient(conn, patient_id, kinds=("glucose",))
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient_id, team, ["readings", "alerts", "twin"], patient_id))
    end = now().replace(second=0, microsecond=0) - timedelta(minutes=20)
    readings = []
    for i in range(14 * 96):
        at = end - timedelta(minutes=15 * i)
        hour = at.hour + at.minute / 60
        meal = max(0.0, 70 - 25 * abs(hour - 8.5)) + max(0.0, 80 - 25 * abs(hour - 13.5)) + \
            max(0.0, 90 - 25 * abs(hour - 19.5))
        spread = ((i * 37) % 41 - 20) * (1.6 if 11 <= hour <= 22 else 0.8)
        readings.append(make_reading(devices["glucose"], "glucose", at,
                                     {"glucose": round(105 + meal + spread - (15 if 3 <= hour <= 5 else 0), 1)}))
    ingest(conn, readings, patient_id)


@pytest.fixture
def workspace(fresh_database_url: str, unique_id: str) -> Iterator[Workspace]:
    settings = CloudSettings(database_url=fresh_database_url, jwt_dev_key=DEV_KEY, api_pool_max=4)
    with psycopg.connect(fresh_database_url, autocommit=True) as conn:
        ward = seed_ward(conn, unique_id)
        fillers = _seed_fillers(conn, unique_id, ward.team)
        resolved, cgm = f"{unique_id}-resolved", f"{unique_id}-cgm"
        _seed_resolved_crisis(conn, resolved, ward.team)
        _seed_cgm(conn, cgm, ward.team)
        conn.execute("UPDATE patients SET display_name = 'Rosalind Achterberg' WHERE id = %s", (resolved,))
        conn.execute("UPDATE patients SET display_name = 'Cecil Glukowski', timezone = 'America/Chicago'"
                     " WHERE id = %s", (cgm,))
        for table in ("patients", "consents", "twins", "alerts"):
            conn.execute(f"ANALYZE {table}")
    clinician = f"{unique_id}-dr"
    token = mint_token(settings, role="clinician", sub=clinician, care_teams=(ward.team,), ttl_s=900)
    with LiveServer(create_app(settings)) as server:
        yield Workspace(server.url, fresh_database_url, ward, ward.team, clinician, token, resolved, cgm, fillers)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launched_chromium()


def _tab(browser: object, workspace: Workspace, **options: object) -> tuple[object, object]:
    context = browser.new_context(timezone_id=BROWSER_ZONE, locale="en-GB", **({  # type: ignore[attr-defined]
        "viewport": {"width": 1280, "height": 900}} | options))
    context.set_default_timeout(10_000)
    tab = context.new_page()
    tab.problems = []
    tab.on("console", lambda m: m.type == "error" and tab.problems.append(f"console: {m.text}"))
    tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
    tab.on("request", lambda r: r.url.startswith(workspace.url) or tab.problems.append(f"outside request: {r.url}"))
    return context, tab


@pytest.fixture
def page(browser: object, workspace: Workspace) -> Iterator[object]:
    context, tab = _tab(browser, workspace)
    try:
        yield tab
    finally:
        context.close()  # type: ignore[attr-defined]


def _open(tab: object, workspace: Workspace, hash_: str = "/") -> None:
    """Sign in with the development token (in the fragment: it never reaches the server) and open a view."""
    from playwright.sync_api import expect

    tab.goto(f"{workspace.url}/ui#token={workspace.token}")  # type: ignore[attr-defined]
    expect(tab.locator("body")).to_have_attribute("data-view", "panel")  # type: ignore[attr-defined]
    if hash_ != "/":
        tab.evaluate(f"location.hash = {hash_!r}")  # type: ignore[attr-defined]


def _query(database_url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


def _panel_ids(tab: object) -> list[str]:
    return tab.locator("#panel-table tbody tr").evaluate_all(  # type: ignore[attr-defined]
        "rows => rows.map(r => r.dataset.patientId)")


# --- the panel -----------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_patient_is_found_by_name_in_one_step(page: object, workspace: Workspace, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab = page
    _open(tab, workspace)
    everyone = FILLERS + len(workspace.ward.expected_order) + 2
    expect(tab.locator(".paging .range").first).to_have_text(f"1{DASH}50 of {everyone}")  # type: ignore[attr-defined]
    expect(tab.locator("#panel-table tbody tr")).to_have_count(50)  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "workspace_panel.png"))  # type: ignore[attr-defined]
    tab.get_by_label("Find a patient by name or id").fill("quist")  # type: ignore[attr-defined]
    tab.keyboard.press("Enter")  # type: ignore[attr-defined]
    rows = tab.locator("#panel-table tbody tr")  # type: ignore[attr-defined]
    expect(rows).to_have_count(1)
    expect(rows.first.locator("a")).to_have_text(NEEDLE)
    expect(tab.locator(".paging .range").first).to_have_text(f"1{DASH}1 of 1")  # type: ignore[attr-defined]
    assert "q=quist" in tab.url  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "workspace_search.png"))  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_paging_keeps_every_patient_reachable_and_back_restores_page_and_scroll(page: object,
                                                                                workspace: Workspace) -> None:
    from playwright.sync_api import expect

    tab = page
    _open(tab, workspace)
    seen: list[str] = []
    pages = -(-(FILLERS + len(workspace.ward.expected_order) + 2) // 50)
    for number in range(1, pages + 1):
        expect(tab.locator(".paging .range").first).to_contain_text(f"{(number - 1) * 50 + 1}{DASH}")  # type: ignore[attr-defined]
        expect(tab.locator("body")).to_have_attribute("data-view", "panel")  # type: ignore[attr-defined]
        seen += _panel_ids(tab)
        if number < pages:
            tab.locator(".paging").first.get_by_role("button", name="Next →").click()  # type: ignore[attr-defined]
    visible = {r[0] for r in _query(workspace.database_url, "SELECT patient_id FROM consents WHERE care_team_id = %s",
                                    workspace.team)}
    assert len(seen) == len(set(seen)) == len(visible) and set(seen) == visible  # nobody silently dropped

    tab.goto(f"{workspace.url}/ui#/?page=2")  # type: ignore[attr-defined]
    expect(tab.locator(".paging .range").first).to_have_text(  # type: ignore[attr-defined]
        f"51{DASH}100 of {len(visible)}")
    second_page = _panel_ids(tab)
    tab.mouse.wheel(0, 1500)  # type: ignore[attr-defined]
    wait_until(lambda: tab.evaluate("window.scrollY") > 1000, 5, "the page to scroll")  # type: ignore[attr-defined]
    scrolled = tab.evaluate("window.scrollY")  # type: ignore[attr-defined]
    # The header row stays in view while the rows scroll under it.
    assert tab.locator("#panel-table thead th").first.bounding_box()["y"] <= 1  # type: ignore[attr-defined]
    target = tab.locator("#panel-table tbody tr").nth(30)  # type: ignore[attr-defined]
    target.locator("a").click()
    expect(tab.locator("body")).to_have_attribute("data-view", "patient")  # type: ignore[attr-defined]
    tab.go_back()  # type: ignore[attr-defined]
    expect(tab.locator("body")).to_have_attribute("data-view", "panel")  # type: ignore[attr-defined]
    assert _panel_ids(tab) == second_page
    assert abs(tab.evaluate("window.scrollY") - scrolled) < 5  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_filters_narrow_to_unacknowledged_critical(page: object, workspace: Workspace, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab = page
    _open(tab, workspace)
    critical = tab.locator('.chip[data-filter="critical"]')  # type: ignore[attr-defined]
    expect(critical.locator(".count")).to_have_text(str(ACKNOWLEDGED_CRITICAL + 1))  # ward's crisis + fillers'
    critical.click()
    expect(tab.locator("#panel-table tbody tr")).to_have_count(ACKNOWLEDGED_CRITICAL + 1)  # type: ignore[attr-defined]
    tab.locator('.chip[data-filter="unacknowledged"]').click()  # type: ignore[attr-defined]
    expected = {r[0] for r in _query(workspace.database_url, "SELECT DISTINCT patient_id FROM alerts"
                                     " WHERE status = 'open' AND severity = 'critical'")}
    assert expected == {workspace.ward.patients["crisis"]}
    rows = tab.locator("#panel-table tbody tr")  # type: ignore[attr-defined]
    expect(rows).to_have_count(len(expected))
    assert set(_panel_ids(tab)) == expected
    expect(rows.first.locator(".ack-state.unacknowledged")).to_contain_text("1 not acknowledged")
    assert "filter=critical" in tab.url and "filter=unacknowledged" in tab.url  # type: ignore[attr-defined]
    expect(tab.locator('.chip[aria-pressed="true"]')).to_have_count(2)  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "workspace_filtered.png"))  # type: ignore[attr-defined]
    # Back: one filter off again, the list as it was.
    tab.go_back()  # type: ignore[attr-defined]
    expect(tab.locator("#panel-table tbody tr")).to_have_count(ACKNOWLEDGED_CRITICAL + 1)  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


# --- the inbox -----------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_the_crisis_is_acknowledged_from_the_inbox_in_three_clicks_and_the_panel_changes(
        page: object, workspace: Workspace, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab, crisis = page, workspace.ward.patients["crisis"]
    _open(tab, workspace)
    row = tab.locator(f'#panel-table tr[data-patient-id="{crisis}"]')  # type: ignore[attr-defined]
    expect(row.locator(".ack-state.unacknowledged")).to_contain_text("1 not acknowledged")
    tab.screenshot(path=str(artifacts_dir / "workspace_flow_1_panel.png"))  # type: ignore[attr-defined]

    tab.get_by_role("link", name="Inbox").click()  # click 1  # type: ignore[attr-defined]
    # Most severe first: the critical ones (this open crisis, and the crisis that resolved unseen) head the list.
    cards = tab.locator("#inbox-list li")  # type: ignore[attr-defined]
    [(waiting,)] = _query(workspace.database_url, "SELECT count(*) FROM alerts WHERE status = 'open'"
                          " OR review_state = 'pending'")
    expect(cards).to_have_count(waiting)
    severities = cards.evaluate_all("cards => cards.map(c => c.dataset.severity)")
    assert severities[:2] == ["critical", "critical"] and "critical" not in severities[2:]
    card = tab.locator(f'#inbox-list li[data-patient-id="{crisis}"]')  # type: ignore[attr-defined]
    expect(card).to_have_attribute("data-status", "open")
    expect(card.locator(".alert-patient")).to_have_text(f"Patient {crisis}")
    expect(card.locator(".message")).to_contain_text("190 mmHg")  # the human unit, not mm[Hg]
    tab.screenshot(path=str(artifacts_dir / "workspace_flow_2_inbox.png"))  # type: ignore[attr-defined]

    card.get_by_role("button", name="Acknowledge").click()  # click 2
    expect(tab.locator("#status")).to_contain_text(f"Alert acknowledged: Hypertensive crisis, Patient {crisis}")  # type: ignore[attr-defined]
    expect(tab.locator(f'#inbox-list li[data-patient-id="{crisis}"][data-status="open"]')).to_have_count(0)  # type: ignore[attr-defined]
    stored = _query(workspace.database_url, "SELECT status, acknowledged_by, review_state FROM alerts"
                    " WHERE patient_id = %s AND rule_id = 'bp_crisis'", crisis)
    assert stored == [("acknowledged", workspace.clinician, "reviewed")]

    tab.get_by_role("link", name="Patients").click()  # click 3: the panel, now saying it was seen  # type: ignore[attr-defined]
    row = tab.locator(f'#panel-table tr[data-patient-id="{crisis}"]')  # type: ignore[attr-defined]
    expect(row.locator(".ack-state.acknowledged")).to_contain_text("acknowledged")
    expect(row.locator(".ack-state.unacknowledged")).to_have_count(0)
    expect(row.locator(".badge")).to_have_text("Critical: 1")  # still open until the readings come down
    tab.screenshot(path=str(artifacts_dir / "workspace_flow_3_acknowledged.png"))  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_crisis_that_resolved_before_review_waits_in_the_inbox_until_reviewed(
        page: object, workspace: Workspace, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab = page
    [(alert_id, status_, review)] = _query(workspace.database_url, "SELECT id, status, review_state FROM alerts"
                                           " WHERE patient_id = %s", workspace.resolved)
    assert (status_, review) == ("resolved", "pending")
    _open(tab, workspace, "#/inbox")
    card = tab.locator(f'#inbox-list li[data-alert-id="{alert_id}"]')  # type: ignore[attr-defined]
    expect(card).to_have_attribute("data-review-state", "pending")
    expect(card.locator(".alert-state")).to_have_text("!Resolved before anyone reviewed it: needs review")
    expect(card.locator(".alert-patient")).to_have_text("Rosalind Achterberg")
    expect(card.get_by_role("button", name="Acknowledge")).to_have_count(0)  # nothing open to acknowledge
    tab.screenshot(path=str(artifacts_dir / "workspace_inbox_needs_review.png"))  # type: ignore[attr-defined]

    # Its patient page lists it with the open ones, and its history shows the episode.
    card.locator(".alert-patient").click()
    item = tab.locator(f'#alert-list li[data-alert-id="{alert_id}"]')  # type: ignore[attr-defined]
    expect(item).to_have_attribute("data-review-state", "pending")
    item.locator(".alert-history summary").click()
    expect(item.locator(".alert-history li")).to_have_count(2)  # opened, resolved
    expect(item.locator(".alert-history")).to_contain_text("Resolved by system")
    tab.go_back()  # type: ignore[attr-defined]

    tab.locator(f'#inbox-list li[data-alert-id="{alert_id}"]').get_by_role(  # type: ignore[attr-defined]
        "button", name="Mark reviewed").click()
    expect(tab.locator(f'#inbox-list li[data-alert-id="{alert_id}"]')).to_have_count(0)  # type: ignore[attr-defined]
    assert _query(workspace.database_url, "SELECT status, review_state, reviewed_by FROM alerts WHERE id = %s",
                  alert_id) == [("resolved", "reviewed", workspace.clinician)]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_new_alert_appears_live_without_reload(page: object, workspace: Workspace, artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab, steady = page, workspace.ward.patients["steady"]
    _open(tab, workspace, "#/inbox")
    expect(tab.locator("#live-state")).to_have_attribute("data-live", "on")  # type: ignore[attr-defined]
    tab.evaluate("window.sameDocument = true")  # type: ignore[attr-defined]
    waiting = "SELECT count(*) FROM alerts WHERE status = 'open' OR review_state = 'pending'"
    [(before,)] = _query(workspace.database_url, waiting)
    expect(tab.locator("#inbox-list li")).to_have_count(before)  # type: ignore[attr-defined]
    with psycopg.connect(workspace.database_url, autocommit=True) as conn:
        ingest(conn, [bp(f"ble:{steady}:blood_pressure", now() - timedelta(minutes=1), 201, 118)], steady)
    [(after,)] = _query(workspace.database_url, waiting)
    assert after > before
    card = tab.locator(f'#inbox-list li[data-severity="critical"][data-status="open"]'  # type: ignore[attr-defined]
                       f':has(a[href="#/patients/{steady}"])')
    expect(card).to_have_count(1, timeout=5_000)
    expect(card.locator(".message")).to_contain_text("201 mmHg")
    expect(tab.locator("#inbox-list li")).to_have_count(after)  # type: ignore[attr-defined]
    assert tab.evaluate("window.sameDocument") is True  # type: ignore[attr-defined]
    assert tab.evaluate("document.body.dataset.lastCritical") is not None  # the sound's trigger saw it  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "workspace_live.png"))  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_deep_link_opens_its_alert_after_sign_in_once(page: object, workspace: Workspace) -> None:
    from playwright.sync_api import expect

    tab, crisis = page, workspace.ward.patients["crisis"]
    [(alert_id,)] = _query(workspace.database_url, "SELECT id FROM alerts WHERE patient_id = %s", crisis)
    with psycopg.connect(workspace.database_url, autocommit=True) as conn:
        url = create_link(conn, alert_id, workspace.clinician, public_url=workspace.url, now=now())
    tab.goto(url)  # type: ignore[attr-defined]
    expect(tab.locator("#sign-in")).to_be_visible()  # type: ignore[attr-defined]
    tab.get_by_label("Bearer token").fill(workspace.token)  # type: ignore[attr-defined]
    tab.get_by_role("button", name="Sign in").click()  # type: ignore[attr-defined]
    item = tab.locator(f'#alert-list li[data-alert-id="{alert_id}"]')  # type: ignore[attr-defined]
    expect(item).to_have_class("alert-card alert-critical highlight")
    expect(item).to_be_focused()
    assert "link=" not in tab.url and f"alert={alert_id}" in tab.url  # type: ignore[attr-defined]
    assert _query(workspace.database_url, "SELECT used_by FROM alert_links WHERE alert_id = %s",
                  alert_id) == [(workspace.clinician,)]
    assert tab.problems == []  # type: ignore[attr-defined]


# --- the patient page and its report -------------------------------------------------------------------------

@pytest.mark.integration
def test_the_agp_draws_five_percentile_curves_over_the_modal_day(page: object, workspace: Workspace,
                                                                 artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    tab = page
    _open(tab, workspace, f"#/patients/{workspace.cgm}?days=14")
    agp = tab.locator("#chart-agp")  # type: ignore[attr-defined]
    expect(agp).to_be_visible()
    expect(agp.locator("[data-percentile]")).to_have_count(5)
    assert agp.locator("[data-percentile]").evaluate_all("gs => gs.map(g => g.dataset.percentile)") == [
        "5", "25", "50", "75", "95"]
    expect(agp.locator('polygon[data-band="5-95"]')).to_have_count(1)
    expect(agp.locator('polygon[data-band="25-75"]')).to_have_count(1)
    expect(agp.locator(".agp-target")).to_have_count(2)
    assert int(agp.locator("svg.agp-svg").get_attribute("data-slots")) == 96
    # In every slot the curves are in order: 5 % lowest on the page (largest y) ... 95 % highest.
    ys = agp.locator("[data-percentile] polyline").evaluate_all(
        "ls => ls.map(l => l.getAttribute('points').split(' ').map(p => Number(p.split(',')[1])))")
    assert all(ys[i][slot] >= ys[i + 1][slot] for i in range(4) for slot in range(96))
    expect(agp.locator(".chart-note")).to_contain_text("America/Chicago")
    # The five consensus ranges, summing to 100 %, and only charts for what this patient measures.
    shares = tab.locator("#summary-glucose .tir-table td").evaluate_all(  # type: ignore[attr-defined]
        "cells => cells.map(c => parseFloat(c.textContent))")
    assert len(shares) == 5 and abs(sum(shares) - 100) < 0.6
    for other in ("#chart-bp", "#chart-weight", "#chart-heart", "#chart-spo2", "#chart-temperature"):
        expect(tab.locator(other)).to_be_hidden()  # type: ignore[attr-defined]
    expect(tab.locator("#summary-bp, #summary-weight")).to_have_count(0)  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / "workspace_agp.png"), full_page=True)  # type: ignore[attr-defined]
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
@pytest.mark.parametrize("paper", ["A4", "Letter"])
def test_the_printed_report_fits_the_paper(page: object, workspace: Workspace, artifacts_dir: Path,
                                          paper: str) -> None:
    from playwright.sync_api import expect

    tab, crisis = page, workspace.ward.patients["crisis"]
    _open(tab, workspace, f"#/patients/{crisis}?days=14")
    expect(tab.locator("body")).to_have_attribute("data-view", "patient")  # type: ignore[attr-defined]
    expect(tab.locator("#print-report")).to_be_visible()  # type: ignore[attr-defined]
    width = PRINT_WIDTHS[paper]
    tab.set_viewport_size({"width": width, "height": 1100})  # type: ignore[attr-defined]
    tab.emulate_media(media="print")  # type: ignore[attr-defined]
    # What the clinic needs is there; the controls are not.
    for shown in ("#report-head", "#summary-bp", "#chart-bp", "#alert-list li", "#equipment"):
        expect(tab.locator(shown).first).to_be_visible()  # type: ignore[attr-defined]
    for hidden in (".site-header", "#print-report", "#period", ".alert-actions button"):
        expect(tab.locator(hidden).first).to_be_hidden()  # type: ignore[attr-defined]
    expect(tab.locator("#report-head")).to_contain_text("last 14 days")  # type: ignore[attr-defined]
    overflow = tab.evaluate("""() => {
        const limit = document.documentElement.clientWidth;
        return [...document.querySelectorAll('#patient *')].filter(n => n.getClientRects().length)
          .map(n => [n.id || n.className.baseVal || n.className || n.tagName, n.getBoundingClientRect().right])
          .filter(([, right]) => right > limit + 0.5);
    }""")  # type: ignore[attr-defined]
    assert overflow == [], overflow
    assert tab.evaluate("document.documentElement.scrollWidth") <= width  # type: ignore[attr-defined]
    tab.screenshot(path=str(artifacts_dir / f"workspace_print_{paper}.png"), full_page=True)  # type: ignore[attr-defined]
    tab.pdf(path=str(artifacts_dir / f"workspace_report_{paper}.pdf"), format=paper,  # type: ignore[attr-defined]
            print_background=True)
    assert tab.problems == []  # type: ignore[attr-defined]


@pytest.mark.integration
def test_a_phone_shows_cards_and_never_scrolls_sideways(browser: object, workspace: Workspace,
                                                        artifacts_dir: Path) -> None:
    from playwright.sync_api import expect

    context, tab = _tab(browser, workspace, viewport={"width": 360, "height": 740}, is_mobile=True,
                        has_touch=True, device_scale_factor=2)
    try:
        _open(tab, workspace)
        rows = tab.locator("#panel-table tbody tr")  # type: ignore[attr-defined]
        expect(rows).to_have_count(50)
        assert rows.first.evaluate("r => getComputedStyle(r).display") == "block"
        assert tab.locator("#panel-table thead").bounding_box()["width"] <= 1  # type: ignore[attr-defined]
        assert tab.evaluate("document.documentElement.scrollWidth") <= 360  # type: ignore[attr-defined]
        expect(rows.first.locator('td[data-label="Blood pressure"]')).to_be_visible()
        tab.screenshot(path=str(artifacts_dir / "workspace_phone_panel.png"))  # type: ignore[attr-defined]
        for view in ("#/inbox", f"#/patients/{workspace.ward.patients['crisis']}"):
            tab.evaluate(f"location.hash = {view!r}")  # type: ignore[attr-defined]
            expect(tab.locator("body")).to_have_attribute(  # type: ignore[attr-defined]
                "data-view", "inbox" if view == "#/inbox" else "patient")
            assert tab.evaluate("document.documentElement.scrollWidth") <= 360, view  # type: ignore[attr-defined]
        tab.screenshot(path=str(artifacts_dir / "workspace_phone_patient.png"))  # type: ignore[attr-defined]
        tab.locator("#alerts").scroll_into_view_if_needed()  # type: ignore[attr-defined]
        tab.screenshot(path=str(artifacts_dir / "workspace_phone_alerts.png"))  # type: ignore[attr-defined]

        # A tablet held upright: the panel is a table again, still without sideways scrolling.
        tab.set_viewport_size({"width": 820, "height": 1180})  # type: ignore[attr-defined]
        tab.evaluate("location.hash = '#/'")  # type: ignore[attr-defined]
        expect(tab.locator("body")).to_have_attribute("data-view", "panel")  # type: ignore[attr-defined]
        assert rows.first.evaluate("r => getComputedStyle(r).display") == "table-row"
        assert tab.evaluate("document.documentElement.scrollWidth") <= 820  # type: ignore[attr-defined]
        tab.screenshot(path=str(artifacts_dir / "workspace_tablet_panel.png"))  # type: ignore[attr-defined]
        assert tab.problems == []  # type: ignore[attr-defined]
    finally:
        context.close()  # type: ignore[attr-defined]
