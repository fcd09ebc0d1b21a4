"""Escalation policies as data, evaluated with an injected ``now``: on-call steps with delays, quiet
hours, fallback when a channel is dead, repeats, stop on acknowledgement or review, patient messages,
and two schedulers racing without sending a step twice. Real PostgreSQL; a database per test, so the
pass sees only this test's alerts."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from cloud.alerts import escalation_config as config
from cloud.alerts import service
from cloud.alerts.channels.email import Mailer, SmtpConfig
from cloud.alerts.delivery import Backoff, deliver_due
from cloud.alerts.escalation import run_escalations
from cloud.alerts.escalation_schedule import OnCallSchedule, Shift, quiet_hours_end
from cloud.embedded import free_port
from tests.cloud.alerts.scripted_patient import add_patient, alerts_in, bp, ingest, now

pytestmark = pytest.mark.integration
ZONE = "Europe/Berlin"
BERLIN = ZoneInfo(ZONE)


@pytest.fixture
def conn(fresh_database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(fresh_database_url, autocommit=True) as connection:
        yield connection


PEOPLE = [
    {"subject": "nurse-ann", "display_name": "Ann Nurse", "email": "ann@example.org", "phone": "+4915100000001",
     "roles": ["nurse"]},
    {"subject": "nurse-bo", "display_name": "Bo Nurse", "email": "bo@example.org", "phone": "+4915100000002",
     "roles": ["nurse"]},
    {"subject": "dr-kim", "display_name": "Dr Kim", "email": "kim@example.org", "roles": ["physician"]},
    {"subject": "lead-lee", "display_name": "Lee Lead", "email": "lee@example.org", "roles": ["team_lead"]},
]
NURSE_ROTA = {"role": "nurse", "timezone": ZONE, "rotation": ["nurse-ann", "nurse-bo"],
              "rotation_start": "2026-01-05T08:00:00", "rotation_hours": 168}
THREE_STEPS = [
    {"delay_s": 0, "target_type": "on_call", "target": "nurse", "channels": ["email", "provider"]},
    {"delay_s": 600, "target_type": "role", "target": "physician", "channels": ["email"]},
    {"delay_s": 1800, "target_type": "person", "target": "lead-lee", "channels": ["email"]},
]


def set_up_team(conn: psycopg.Connection, team: str, *, steps: list[dict[str, Any]] | None = None,
                people: list[dict[str, Any]] | None = None, **policy: Any) -> None:
    conn.execute("INSERT INTO care_teams (id, name) VALUES (%s, %s) ON CONFLICT DO NOTHING", (team, f"Team {team}"))
    config.replace_contacts(conn, team, config.Contacts(contacts=people or PEOPLE), "admin")
    config.replace_schedules(conn, team, config.Schedules(schedules=[NURSE_ROTA]), "admin")
    config.replace_policies(conn, team, config.Policies(policies=[{"name": "default", "steps": steps or THREE_STEPS,
                                                                   **policy}]), "admin")


def patient_of(conn: psycopg.Connection, team: str, patient_id: str) -> str:
    cuff = add_patient(conn, patient_id)["blood_pressure"]
    conn.execute("INSERT INTO consents (patient_id, care_team_id, scopes, granted_by) VALUES (%s, %s, %s, %s)",
                 (patient_id, team, ["readings", "alerts"], patient_id))
    return cuff


def crisis(conn: psycopg.Connection, patient_id: str, cuff: str) -> dict[str, Any]:
    [alert] = [a for a in alerts_in(ingest(conn, [bp(cuff, now() - timedelta(minutes=1), 192, 110)], patient_id))
               if a.rule == "bp_crisis"]
    return service.get_alert(conn, int(alert.alert_id))


def messages(conn: psycopg.Connection, alert_id: int) -> list[tuple[Any, ...]]:
    """(step, recipient, channel, kind, address) of the alert's escalation messages, in order."""
    return conn.execute("SELECT step, recipient, channel, kind, address FROM alert_deliveries"
                        " WHERE alert_id = %s AND escalation_id IS NOT NULL ORDER BY id", (alert_id,)).fetchall()


def escalation(conn: psycopg.Connection, alert_id: int) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        [row] = cur.execute("SELECT * FROM alert_escalations WHERE alert_id = %s", (alert_id,)).fetchall()
        return row


def on_call_now(at: datetime) -> str:
    return OnCallSchedule("nurse", ZONE, ("nurse-ann", "nurse-bo"), datetime(2026, 1, 5, 8), 168).on_call(at)[0]


def test_a_crisis_reaches_the_on_call_nurse_then_the_physician_and_acknowledging_stops_the_chain(conn):
    set_up_team(conn, "cardio")
    alert = crisis(conn, "p-chain", patient_of(conn, "cardio", "p-chain"))
    t0 = now()
    nurse = on_call_now(t0)
    address = {p["subject"]: p for p in PEOPLE}[nurse]

    report = run_escalations(conn, t0)
    assert (report.started, report.steps, report.messages) == (1, 1, 2)
    assert messages(conn, alert["id"]) == [(0, nurse, "email", "alert", address["email"]),
                                           (0, nurse, "provider", "alert", address["phone"])]
    assert run_escalations(conn, t0 + timedelta(seconds=599)).steps == 0  # the physician's delay has not passed
    assert run_escalations(conn, t0 + timedelta(seconds=601)).steps == 1
    assert messages(conn, alert["id"])[2:] == [(1, "dr-kim", "email", "escalation", "kim@example.org")]
    # The rendered escalation says how long the alert has waited and which step this is.
    payload = conn.execute("SELECT convert_from(payload, 'UTF8') FROM alert_deliveries WHERE alert_id = %s"
                           " AND step = 1", (alert["id"],)).fetchone()[0]
    assert "Not acknowledged after 1" in payload and "Escalation step" in payload

    service.acknowledge(conn, alert["id"], "dr-kim")
    report = run_escalations(conn, t0 + timedelta(seconds=2400))
    assert (report.stopped, report.steps) == (1, 0)
    assert len(messages(conn, alert["id"])) == 3
    state = escalation(conn, alert["id"])
    assert (state["stop_reason"], state["next_step"], state["sent_step"]) == ("acknowledged", 2, 1)


def test_acknowledging_cancels_a_step_queued_but_not_yet_sent(conn):
    set_up_team(conn, "cardio")
    alert = crisis(conn, "p-cancel", patient_of(conn, "cardio", "p-cancel"))
    run_escalations(conn, now())
    service.acknowledge(conn, alert["id"], "nurse-ann")
    report = run_escalations(conn, now())
    assert (report.stopped, report.cancelled) == (1, 2)
    rows = conn.execute("SELECT failed_at IS NOT NULL, last_error FROM alert_deliveries WHERE alert_id = %s"
                        " AND escalation_id IS NOT NULL", (alert["id"],)).fetchall()
    assert rows == [(True, "cancelled: the escalation stopped (acknowledged)")] * 2


def test_a_crisis_resolved_within_one_sync_escalates_until_reviewed(conn):
    set_up_team(conn, "cardio")
    cuff = patient_of(conn, "cardio", "p-sync")
    t = now()
    ingest(conn, [bp(cuff, t - timedelta(minutes=30), 192, 118), bp(cuff, t - timedelta(minutes=25), 130, 80),
                  bp(cuff, t - timedelta(minutes=20), 128, 79)], "p-sync")
    [alert] = service.list_alerts(conn, patient_id="p-sync", review_state=["pending"])
    assert alert["status"] == "resolved"
    t = now()
    assert run_escalations(conn, t).messages == 2
    assert run_escalations(conn, t + timedelta(seconds=601)).messages == 1
    service.acknowledge(conn, alert["id"], "dr-kim")  # the review
    assert run_escalations(conn, t + timedelta(seconds=1900)).stopped == 1
    assert escalation(conn, alert["id"])["stop_reason"] == "reviewed"


def test_a_warning_that_resolves_needing_no_review_stops_its_escalation(conn):
    set_up_team(conn, "cardio")
    cuff = patient_of(conn, "cardio", "p-low")
    [low] = alerts_in(ingest(conn, [bp(cuff, now() - timedelta(minutes=30), 85, 60)], "p-low"))
    assert low.severity == "warning"
    t = now()
    assert run_escalations(conn, t).steps == 1
    ingest(conn, [bp(cuff, t - timedelta(minutes=20 - m), 120, 75) for m in range(2)], "p-low")
    assert run_escalations(conn, t + timedelta(seconds=700)).stopped == 1
    assert escalation(conn, int(low.alert_id))["stop_reason"] == "resolved"


def test_policies_filter_by_severity_and_category_and_ignore_alerts_from_before_the_policy(conn):
    conn.execute("INSERT INTO care_teams (id, name) VALUES ('crit-only', 'x')")
    cuff = patient_of(conn, "crit-only", "p-filter")
    old = crisis(conn, "p-filter", cuff)  # opened before the team had a policy: never pages
    set_up_team(conn, "crit-only", min_severity="critical")
    ingest(conn, [bp(cuff, now(), 84, 58)], "p-filter")  # a warning (hypotension)
    run_escalations(conn, now())
    assert conn.execute("SELECT count(*) FROM alert_escalations").fetchone()[0] == 0
    assert messages(conn, old["id"]) == []


def test_quiet_hours_hold_a_warning_until_they_end_while_a_crisis_goes_at_once(conn):
    set_up_team(conn, "night", quiet_start="22:00", quiet_end="07:00", timezone=ZONE,
                steps=[{"delay_s": 0, "target_type": "person", "target": "dr-kim", "channels": ["email"]}])
    cuff = patient_of(conn, "night", "p-night")
    t = now()
    [low] = alerts_in(ingest(conn, [bp(cuff, t - timedelta(minutes=2), 85, 60)], "p-night"))
    high = crisis(conn, "p-night", cuff)
    night = datetime.combine(t.astimezone(BERLIN).date() + timedelta(days=1), time(23, 30), tzinfo=BERLIN)
    morning = quiet_hours_end(night, ZONE, time(22), time(7))
    assert morning is not None and morning.astimezone(BERLIN).time() == time(7)

    report = run_escalations(conn, night)
    assert (report.steps, report.held) == (1, 1)
    assert len(messages(conn, high["id"])) == 1 and messages(conn, int(low.alert_id)) == []
    assert escalation(conn, int(low.alert_id))["next_at"] == morning
    assert run_escalations(conn, morning - timedelta(seconds=1)).steps == 0
    assert run_escalations(conn, morning).steps == 1
    assert messages(conn, int(low.alert_id)) == [(0, "dr-kim", "email", "alert", "kim@example.org")]


def test_a_step_whose_messages_all_fail_falls_back_to_the_next_step_at_once(conn):
    set_up_team(conn, "dead-mail", steps=[
        {"delay_s": 0, "target_type": "person", "target": "nurse-ann", "channels": ["email"]},
        {"delay_s": 3600, "target_type": "person", "target": "dr-kim", "channels": ["email"]}])
    alert = crisis(conn, "p-dead", patient_of(conn, "dead-mail", "p-dead"))
    run_escalations(conn, now(), max_attempts=1)
    dead = Mailer(SmtpConfig(host="127.0.0.1", port=free_port(), security="none", timeout_s=2))  # nothing listens
    with httpx.Client() as http:
        report = deliver_due(conn, http=http, backoff=Backoff(), mailer=dead)
    assert report.failed == 1
    report = run_escalations(conn, now() + timedelta(seconds=1), max_attempts=1)
    assert (report.steps, report.fell_back) == (1, 1)
    assert [m[:2] for m in messages(conn, alert["id"])] == [(0, "nurse-ann"), (1, "dr-kim")]
    assert "failed on every channel" in escalation(conn, alert["id"])["last_note"]


def test_a_step_that_reaches_nobody_moves_on_and_says_why(conn):
    set_up_team(conn, "nobody", steps=[
        {"delay_s": 0, "target_type": "role", "target": "pharmacist", "channels": ["email"]},
        {"delay_s": 900, "target_type": "person", "target": "lead-lee", "channels": ["email"]}])
    alert = crisis(conn, "p-nobody", patient_of(conn, "nobody", "p-nobody"))
    t = now()
    assert run_escalations(conn, t).messages == 0
    assert "no contact has the role pharmacist" in escalation(conn, alert["id"])["last_note"]
    assert run_escalations(conn, t).messages == 1  # due at once, not after 15 min
    assert [m[:2] for m in messages(conn, alert["id"])] == [(1, "lead-lee")]


def test_the_last_step_repeats_up_to_its_limit_then_the_escalation_is_exhausted(conn):
    set_up_team(conn, "repeat", repeat_every_minutes=10, repeat_max=2,
                steps=[{"delay_s": 0, "target_type": "person", "target": "dr-kim", "channels": ["email"]}])
    alert = crisis(conn, "p-repeat", patient_of(conn, "repeat", "p-repeat"))
    t = now()
    sent = [run_escalations(conn, t + timedelta(minutes=m)).messages for m in (0, 5, 10, 15, 20, 30, 60)]
    assert sent == [1, 0, 1, 0, 1, 0, 0]
    state = escalation(conn, alert["id"])
    assert (state["repeats"], state["stop_reason"]) == (2, "exhausted")


def test_a_reopened_alert_is_a_new_episode_and_escalates_again(conn):
    set_up_team(conn, "reopen", steps=[
        {"delay_s": 0, "target_type": "person", "target": "dr-kim", "channels": ["email"]},
        {"delay_s": 3600, "target_type": "person", "target": "lead-lee", "channels": ["email"]}])
    cuff = patient_of(conn, "reopen", "p-reopen")
    alert = crisis(conn, "p-reopen", cuff)
    run_escalations(conn, now())
    service.acknowledge(conn, alert["id"], "dr-kim")
    run_escalations(conn, now())
    ingest(conn, [bp(cuff, now() - timedelta(seconds=30 - m), 120, 75) for m in range(2)], "p-reopen")
    assert crisis(conn, "p-reopen", cuff)["id"] == alert["id"]  # same episode window: re-opened
    run_escalations(conn, now())
    rows = conn.execute("SELECT episode, stop_reason FROM alert_escalations WHERE alert_id = %s ORDER BY episode",
                        (alert["id"],)).fetchall()
    assert rows == [(0, "acknowledged"), (1, None)]
    assert len(messages(conn, alert["id"])) == 2


def test_two_schedulers_racing_never_queue_a_step_twice(conn, fresh_database_url):
    set_up_team(conn, "race")
    alerts = [crisis(conn, f"p-race-{i}", patient_of(conn, "race", f"p-race-{i}"))["id"] for i in range(12)]
    t = now()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def scheduler() -> None:
        try:
            with psycopg.connect(fresh_database_url, autocommit=True) as own:
                for offset in (0, 0, 601, 601, 1801, 1801):
                    barrier.wait(10)
                    run_escalations(own, t + timedelta(seconds=offset))
        except BaseException as err:  # reported by the test thread
            errors.append(err)

    threads = [threading.Thread(target=scheduler) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    counts = conn.execute("SELECT escalation_id, step, recipient, channel, count(*) FROM alert_deliveries"
                          " WHERE escalation_id IS NOT NULL GROUP BY 1, 2, 3, 4").fetchall()
    assert {c[-1] for c in counts} == {1}
    assert len(counts) == len(alerts) * 4  # nurse twice (e-mail, SMS), physician, team lead
    assert conn.execute("SELECT count(*) FROM alert_escalations").fetchone()[0] == len(alerts)


def test_patients_who_opted_in_get_one_message_per_episode(conn):
    conn.execute("INSERT INTO care_teams (id, name) VALUES ('pt', 'x')")
    cuff = patient_of(conn, "pt", "p-msg")
    patient_of(conn, "pt", "p-quiet")
    conn.execute("INSERT INTO patient_contacts (patient_id, channel, address, opted_in_at, opted_in_by) VALUES"
                 " ('p-msg', 'email', 'me@example.org', now() - interval '1 day', 'p-msg'),"
                 " ('p-quiet', 'email', 'q@example.org', now() - interval '1 day', 'p-quiet')")
    conn.execute("UPDATE patient_contacts SET opted_out_at = now(), opted_out_by = 'p-quiet'"
                 " WHERE patient_id = 'p-quiet'")
    alert = crisis(conn, "p-msg", cuff)
    crisis(conn, "p-quiet", "ble:p-quiet:blood_pressure")
    assert run_escalations(conn, now()).patient_messages == 1
    assert run_escalations(conn, now()).patient_messages == 0
    row = conn.execute("SELECT recipient, audience, kind, address, convert_from(payload, 'UTF8') FROM alert_deliveries"
                       " WHERE alert_id = %s AND audience = 'patient'", (alert["id"],)).fetchone()
    assert row[:4] == ("patient:p-msg", "patient", "patient_repeat_reading", "me@example.org")
    assert "in 5 minutes" in row[4]


def test_on_call_follows_the_rotation_in_wall_clock_time_across_dst_and_shifts_override_it():
    rota = OnCallSchedule("nurse", ZONE, ("ann", "bo"), datetime(2026, 3, 23, 8), 168,
                          shifts=(Shift("cy", datetime(2026, 4, 4, 20), datetime(2026, 4, 5, 8)),))
    # Clocks went forward on 29 March: the hand-off on Monday 30 March is still at 08:00 Berlin time.
    assert rota.on_call(datetime(2026, 3, 30, 7, 59, tzinfo=BERLIN)) == ["ann"]
    assert rota.on_call(datetime(2026, 3, 30, 8, 0, tzinfo=BERLIN)) == ["bo"]
    assert rota.on_call(datetime(2026, 3, 30, 6, 0, tzinfo=UTC)) == ["bo"]  # 08:00 CEST
    assert rota.on_call(datetime(2026, 4, 4, 23, 0, tzinfo=BERLIN)) == ["cy"]
    assert rota.on_call(datetime(2026, 4, 5, 8, 0, tzinfo=BERLIN)) == ["bo"]
    assert rota.on_call(datetime(2026, 3, 22, 12, 0, tzinfo=BERLIN)) == []  # before the rota starts


def test_bad_configuration_is_refused_with_the_reason(conn):
    conn.execute("INSERT INTO care_teams (id, name) VALUES ('bad', 'x')")
    with pytest.raises(ValidationError, match="unknown time zone"):
        config.Policies(policies=[{"name": "x", "timezone": "Mars/Olympus", "steps": THREE_STEPS}])
    with pytest.raises(ValidationError, match="must not decrease"):
        config.Policies(policies=[{"name": "x", "steps": list(reversed(THREE_STEPS))}])
    with pytest.raises(ValidationError, match="without an offset"):
        config.Schedules(schedules=[{**NURSE_ROTA, "rotation_start": "2026-01-05T08:00:00+01:00"}])
    with pytest.raises(config.EscalationConfigError, match="not a contact"):
        config.replace_policies(conn, "bad", config.Policies(policies=[{"name": "x", "steps": THREE_STEPS}]), "me")
    with pytest.raises(config.EscalationConfigError, match="no on-call schedule for role 'nurse'"):
        config.replace_contacts(conn, "bad", config.Contacts(contacts=PEOPLE), "me")
        config.replace_policies(conn, "bad", config.Policies(policies=[{"name": "x", "steps": THREE_STEPS}]), "me")


def test_a_policy_broken_behind_the_apis_back_holds_only_its_own_escalations(conn):
    set_up_team(conn, "broken", quiet_start="22:00", quiet_end="07:00",
                steps=[{"delay_s": 0, "target_type": "person", "target": "dr-kim", "channels": ["email"]}])
    set_up_team(conn, "fine", steps=[{"delay_s": 0, "target_type": "person", "target": "dr-kim",
                                      "channels": ["email"]}])
    conn.execute("UPDATE escalation_policies SET timezone = 'Mars/Olympus' WHERE care_team_id = 'broken'")
    [low] = alerts_in(ingest(conn, [bp(patient_of(conn, "broken", "p-broken"), now(), 84, 58)], "p-broken"))
    [fine] = alerts_in(ingest(conn, [bp(patient_of(conn, "fine", "p-fine"), now(), 84, 58)], "p-fine"))
    report = run_escalations(conn, now())
    assert report.steps == 1 and len(report.errors) == 1 and "Mars/Olympus" in report.errors[0]
    assert messages(conn, int(fine.alert_id)) == [(0, "dr-kim", "email", "alert", "kim@example.org")]
    assert "unknown time zone" in escalation(conn, int(low.alert_id))["last_note"]
