"""The triage panel's search, filters, counts, sort and pages (contract D), over a ward seeded through the
real effects path (readings → alerts → twin → patient_panel), and the projection behind them (migration 0590)
kept right by the alerts' triggers, including under concurrent writers.

Expected sets are not written down by hand where the rules decide (a baseline alert may open beside a
crisis): they come from the alerts table itself, by the definitions of contract D, and the projection must
agree with them; the memberships the seeding fixes are asserted as well.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient

from tests.cloud.alerts.scripted_patient import add_patient, bp, ingest, midday, now
from tests.cloud.api.conftest import TokenFactory, grant

ALL = ("readings", "alerts", "twin")
FILTERS = ("critical", "unacknowledged", "needs_review", "missing_data", "below_16_days", "device_problem")


@dataclass
class Ward:
    team: str
    ids: dict[str, str]
    names: dict[str, str]
    headers: dict[str, str]
    scopes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def visible(self) -> set[str]:
        return {self.ids[n] for n in self.scopes}


def _days_of_bp(conn: psycopg.Connection, patient_id: str, device: str, days: int) -> None:
    ingest(conn, [bp(device, midday(d) - timedelta(hours=1), 126 + d % 3, 80) for d in range(days, 0, -1)], patient_id)


def _crisis(conn: psycopg.Connection, patient_id: str, device: str) -> None:
    ingest(conn, [bp(device, now() - timedelta(minutes=30), 192, 124)], patient_id)


def _open_alert(conn: psycopg.Connection, patient_id: str, rule_id: str) -> int:
    # What the scheduler (missing data) and gateway statuses (technical) open; the trigger must see it.
    row = conn.execute("INSERT INTO alerts (patient_id, rule_id, severity, status, message) SELECT %s, id, severity,"
                       " 'open', description FROM alert_rules WHERE id = %s RETURNING id",
                       (patient_id, rule_id)).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def ward(conn: psycopg.Connection, unique_id: str, auth: TokenFactory, client: TestClient) -> Ward:
    team, other = f"{unique_id}-team", f"{unique_id}-other"
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, 'Ward'), (%s, 'Elsewhere')", (team, other))
    names = {"crisis": "Ana Álvarez", "acked": "Ben Brown", "resolved": "Cleo Chu", "missing": "Dan Doe",
             "device": "Eve Evans", "sparse": "Fay 50%_off", "steady": "Gus Green", "readings_only": "Hal Hill",
             "alerts_only": "Ivy Ito", "stranger": "Ana Stranger"}
    ids = {n: f"{unique_id}-{n}" for n in names}
    w = Ward(team, ids, names, auth("clinician", sub=f"{unique_id}-dr", care_teams=(team,)))
    days = {"sparse": 2, "readings_only": 3, "alerts_only": 2}
    for n, patient_id in ids.items():
        device = add_patient(conn, patient_id)["blood_pressure"]
        conn.execute("UPDATE patients SET display_name = %s WHERE id = %s", (names[n], patient_id))
        _days_of_bp(conn, patient_id, device, days.get(n, 20))
        if n in ("crisis", "acked", "resolved", "readings_only", "alerts_only", "stranger"):
            _crisis(conn, patient_id, device)
        if n == "resolved":  # back below the margin twice: resolved by the system, a person never looked
            ingest(conn, [bp(device, now() - timedelta(minutes=m), 130, 82) for m in (20, 10)], patient_id)
        scopes = {"readings_only": ("readings",), "alerts_only": ("alerts",)}.get(n, ALL)
        if n == "stranger":
            grant(conn, patient_id, other, list(ALL))
        else:
            grant(conn, patient_id, team, list(scopes))
            w.scopes[n] = scopes
    _open_alert(conn, ids["missing"], "missing_blood_pressure")
    _open_alert(conn, ids["device"], "device_unreadable_records")
    for (alert_id,) in conn.execute("SELECT id FROM alerts WHERE patient_id = %s AND status = 'open'",
                                    (ids["acked"],)).fetchall():
        assert client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=w.headers).status_code == 200
    return w


def _oracle(conn: psycopg.Connection, w: Ward) -> dict[str, set[str]]:
    """Contract D's filters, straight from the alerts and readings tables, masked by the consent scopes."""
    def patients(sql: str) -> set[str]:
        return {r[0] for r in conn.execute(sql + " AND a.patient_id = ANY(%s)", (sorted(w.visible),)).fetchall()}
    alerts = {n for n, s in w.scopes.items() if "alerts" in s}
    readings = {n for n, s in w.scopes.items() if "readings" in s}
    by_alerts = {w.ids[n] for n in alerts}
    found = {
        "critical": patients("SELECT a.patient_id FROM alerts a WHERE a.status <> 'resolved'"
                             " AND a.severity = 'critical'"),
        "unacknowledged": patients("SELECT a.patient_id FROM alerts a WHERE a.status = 'open'"),
        "needs_review": patients("SELECT a.patient_id FROM alerts a WHERE a.status = 'resolved'"
                                 " AND a.review_state = 'pending'"),
        "missing_data": patients("SELECT a.patient_id FROM alerts a JOIN alert_rules r ON r.id = a.rule_id"
                                 " WHERE a.status <> 'resolved' AND r.rule_type = 'missing_data'"),
        "device_problem": patients("SELECT a.patient_id FROM alerts a WHERE a.status <> 'resolved'"
                                   " AND a.category = 'technical'"),
    }
    found = {k: v & by_alerts for k, v in found.items()}
    days = dict(conn.execute(
        "SELECT a.patient_id, count(DISTINCT (a.measured_at AT TIME ZONE 'UTC')::date) FROM readings a"
        " WHERE a.measured_at >= (now() AT TIME ZONE 'UTC')::date - 29 AND a.patient_id = ANY(%s)"
        " GROUP BY a.patient_id", (sorted(w.visible),)).fetchall())
    found["below_16_days"] = {w.ids[n] for n in readings if days.get(w.ids[n], 0) < 16}
    return found


def _panel(client: TestClient, w: Ward, **params: Any) -> dict[str, Any]:
    response = client.get("/v1/patients", params=params, headers=w.headers)
    assert response.status_code == 200, response.text
    return response.json()


def _ids(body: dict[str, Any]) -> list[str]:
    return [p["patient_id"] for p in body["patients"]]


def test_counts_are_over_the_whole_panel_whatever_the_page(client: TestClient, conn: psycopg.Connection,
                                                            ward: Ward) -> None:
    oracle = _oracle(conn, ward)
    body = _panel(client, ward, limit=1, q="Ana")
    assert body["counts"] == {"all": len(ward.visible), **{k: len(v) for k, v in oracle.items()}}
    assert body["total"] == 1 and _ids(body) == [ward.ids["crisis"]]  # the stranger named Ana is not ours
    assert (body["limit"], body["offset"]) == (1, 0)


@pytest.mark.parametrize("name", FILTERS)
def test_each_filter_finds_exactly_the_patients_it_names(client: TestClient, conn: psycopg.Connection, ward: Ward,
                                                         name: str) -> None:
    body = _panel(client, ward, filter=name, limit=500)
    assert set(_ids(body)) == _oracle(conn, ward)[name]
    assert body["total"] == len(body["patients"])


def test_the_seeding_puts_each_patient_under_its_filter(client: TestClient, ward: Ward) -> None:
    def found(name: str) -> set[str]:
        return set(_ids(_panel(client, ward, filter=name, limit=500)))
    ids = ward.ids
    assert {ids["crisis"], ids["acked"], ids["alerts_only"]} <= found("critical")
    assert ids["acked"] not in found("unacknowledged") and ids["crisis"] in found("unacknowledged")
    assert ids["resolved"] in found("needs_review") and ids["resolved"] not in found("critical")
    assert found("missing_data") == {ids["missing"]} and found("device_problem") == {ids["device"]}
    assert {ids["sparse"], ids["readings_only"]} <= found("below_16_days")
    # A scope the caller lacks never shows through a filter: readings_only's crisis, alerts_only's two days.
    assert ids["readings_only"] not in found("critical") | found("unacknowledged")
    assert ids["alerts_only"] not in found("below_16_days")
    assert ids["stranger"] not in set().union(*(found(f) for f in FILTERS))


def test_filters_all_hold_together(client: TestClient, ward: Ward) -> None:
    body = _panel(client, ward, filter=["critical", "unacknowledged"], limit=500)
    assert ward.ids["acked"] not in _ids(body)
    assert {ward.ids["crisis"], ward.ids["alerts_only"]} <= set(_ids(body))
    assert _panel(client, ward, filter=["missing_data", "device_problem"])["total"] == 0


def test_search_matches_name_or_id_in_any_case_and_takes_wildcards_literally(client: TestClient,
                                                                              ward: Ward) -> None:
    assert _ids(_panel(client, ward, q="gREEN")) == [ward.ids["steady"]]
    assert _ids(_panel(client, ward, q="álv")) == [ward.ids["crisis"]]
    assert _ids(_panel(client, ward, q=ward.ids["device"].upper())) == [ward.ids["device"]]
    assert _ids(_panel(client, ward, q="50%_")) == [ward.ids["sparse"]]
    assert _panel(client, ward, q="5_%")["total"] == 0  # would match "50%_off" if % and _ were wildcards
    assert _panel(client, ward, q="%")["total"] == 1
    assert _panel(client, ward, q="   ")["total"] == len(ward.visible)  # blank: no search


def test_pages_reach_every_patient_once_in_the_order_of_one_big_page(client: TestClient, ward: Ward) -> None:
    whole = _ids(_panel(client, ward, limit=500))
    assert set(whole) == ward.visible
    paged: list[str] = []
    for offset in range(0, len(whole) + 3, 3):
        body = _panel(client, ward, limit=3, offset=offset)
        assert body["total"] == len(whole)
        paged += _ids(body)
    assert paged == whole


def test_triage_is_the_default_order_and_asc_reverses_it(client: TestClient, ward: Ward) -> None:
    body = _panel(client, ward, limit=500)
    assert body == _panel(client, ward, limit=500, sort="triage", order="desc")
    rows = body["patients"]
    keys = [((r["open_alerts"] or {}).get("critical", 0), (r["open_alerts"] or {}).get("warning", 0)) for r in rows]
    assert keys == sorted(keys, reverse=True)
    assert rows[0]["open_alerts"]["critical"] >= 1
    assert _ids(_panel(client, ward, limit=500, order="asc")) == list(reversed(_ids(body)))


def test_sort_by_name_last_reading_and_days_with_data(client: TestClient, ward: Ward) -> None:
    by_name = _panel(client, ward, sort="name", limit=500)["patients"]
    assert [p["display_name"].lower() for p in by_name] == sorted(p["display_name"].lower() for p in by_name)
    assert _ids(_panel(client, ward, sort="name", order="desc", limit=500)) == list(reversed(_ids({"patients":
                                                                                                   by_name})))
    newest = _panel(client, ward, sort="last_reading", limit=500)["patients"]
    times = [p["last_reading_at"] for p in newest if p["last_reading_at"] is not None]
    assert times == sorted(times, reverse=True) and len(times) == len(newest) - 1  # alerts_only: no readings scope
    assert newest[-1]["patient_id"] == ward.ids["alerts_only"]
    fewest = _panel(client, ward, sort="days_with_data", limit=500)["patients"]
    days = [p["adherence"]["days_with_readings"] for p in fewest if p["adherence"] is not None]
    assert days == sorted(days) and fewest[0]["patient_id"] == ward.ids["sparse"]


def test_rows_carry_alert_state_and_last_reading(client: TestClient, conn: psycopg.Connection, ward: Ward) -> None:
    rows = {p["patient_id"]: p for p in _panel(client, ward, limit=500)["patients"]}
    crisis, acked, resolved = rows[ward.ids["crisis"]], rows[ward.ids["acked"]], rows[ward.ids["resolved"]]
    assert crisis["unacknowledged"] >= 1 and acked["unacknowledged"] == 0 and acked["open_alerts"]["critical"] == 1
    assert resolved["needs_review"] == 1 and resolved["open_alerts"]["critical"] == 0
    assert rows[ward.ids["device"]]["device_problem"] == 1 and rows[ward.ids["missing"]]["missing_data"] == 1
    newest = conn.execute("SELECT max(measured_at) FROM readings WHERE patient_id = %s",
                          (ward.ids["resolved"],)).fetchone()[0]
    assert datetime.fromisoformat(resolved["last_reading_at"]) == newest
    ro = rows[ward.ids["readings_only"]]
    assert ro["open_alerts"] is None and ro["unacknowledged"] is None and ro["needs_review"] is None
    ao = rows[ward.ids["alerts_only"]]
    assert ao["last_reading_at"] is None and ao["latest"] is None and ao["unacknowledged"] >= 1


def test_acknowledging_and_reviewing_change_the_panel(client: TestClient, conn: psycopg.Connection,
                                                      ward: Ward) -> None:
    before = _panel(client, ward)["counts"]
    for patient in ("crisis", "resolved"):
        for (alert_id,) in conn.execute("SELECT id FROM alerts WHERE patient_id = %s AND (status = 'open'"
                                        " OR review_state = 'pending')", (ward.ids[patient],)).fetchall():
            assert client.post(f"/v1/alerts/{alert_id}/acknowledge", headers=ward.headers).status_code == 200
    after = _panel(client, ward)["counts"]
    assert after["unacknowledged"] == before["unacknowledged"] - 1
    assert after["needs_review"] == before["needs_review"] - 1 == 0
    assert after["critical"] == before["critical"]  # acknowledged is still open
    assert after == {"all": len(ward.visible), **{k: len(v) for k, v in _oracle(conn, ward).items()}}


def test_limit_is_at_most_500_and_bad_parameters_are_problems(client: TestClient, ward: Ward) -> None:
    for params in ({"limit": 501}, {"limit": 0}, {"filter": "sick"}, {"sort": "age"}, {"order": "up"}):
        response = client.get("/v1/patients", params=params, headers=ward.headers)
        assert response.status_code == 422, params
        assert response.headers["content-type"].startswith("application/problem+json")


def test_the_audit_row_names_the_page_not_the_panel(client: TestClient, conn: psycopg.Connection,
                                                    ward: Ward) -> None:
    response = client.get("/v1/patients", params={"limit": 2, "sort": "name"}, headers=ward.headers)
    named = conn.execute("SELECT patient_ids FROM audit_log WHERE request_id = %s",
                         (response.headers["x-request-id"],)).fetchall()
    assert named == [(_ids(response.json()),)]


def test_concurrent_alert_changes_of_one_patient_leave_the_right_counts(conn: psycopg.Connection,
                                                                       database_url: str, unique_id: str) -> None:
    patient = f"{unique_id}-busy"
    add_patient(conn, patient)
    first, second = (_open_alert(conn, patient, rule) for rule in ("missing_blood_pressure", "bp_hypotension"))
    with psycopg.connect(database_url) as one, psycopg.connect(database_url) as two:
        one.execute("UPDATE alerts SET status = 'acknowledged' WHERE id = %s", (first,))  # holds the panel row
        done = threading.Event()

        def other_writer() -> None:
            two.execute("UPDATE alerts SET status = 'resolved', resolved_at = now() WHERE id = %s", (second,))
            two.commit()
            done.set()
        thread = threading.Thread(target=other_writer)
        thread.start()
        assert not done.wait(0.5), "the second writer waits for the panel row"
        one.commit()
        thread.join(10)
    row = conn.execute("SELECT unacknowledged, open_warning, missing_data FROM patient_panel WHERE patient_id = %s",
                       (patient,)).fetchone()
    # Counted from a snapshot taken before the first commit, the second writer would still see one 'open'.
    assert row == (0, 1, 1)  # the missing-data alert is acknowledged, still open; the hypotension resolved
