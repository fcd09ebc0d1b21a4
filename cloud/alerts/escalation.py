"""Escalation: an alert that needs a human reaches one, step by step, until someone looks.

:func:`run_escalations` is called by every ``rpm-cloud scheduler`` delivery pass with ``now``, before
the outbox is sent (so a step queued in a pass goes out in the same pass). In order:

1. **Stop** every running escalation whose alert no longer needs it (contracts A: acknowledged,
   reviewed, or resolved needing no review; also a re-opened episode's old chain, or a team whose
   consent ended), and cancel its messages not yet sent.
2. **Start** one escalation per alert that needs a human (``status = 'open' OR review_state =
   'pending'``), not late, and care team that sees it (an active consent with the ``alerts`` scope) and
   has a matching policy (the first by position whose minimum severity and categories fit). A re-opened
   alert is a new episode and escalates again.
3. **Step**: due escalations are claimed with ``FOR UPDATE SKIP LOCKED`` in the transaction that
   queues the step's messages and moves the escalation on, so two schedulers never send a step twice
   and a scheduler that dies mid-step leaves nothing half done. The alert row is read ``FOR SHARE``,
   which waits for an acknowledgement in flight. Targets are resolved at send time: a person, every
   contact with a role, or who holds a role on call now in the schedule's zone. One message per
   target and channel goes through :func:`cloud.alerts.channels.queue_message` (e-mail, SMS/voice
   provider) or a webhook outbox row, each with few attempts (``max_attempts``) so a dead channel
   gives up quickly; a step whose messages were all given up, or that reached nobody, moves on to the
   next step at once (fallback). Non-critical steps due in the policy's quiet hours wait for their
   end; critical ones bypass. After the last step it is repeated every ``repeat_every_minutes`` up to
   ``repeat_max`` times, then the escalation stops as ``exhausted`` (the alert stays in the inbox).
4. **Patient messages**: open alerts whose rule sends one (``patient_message_rules``) reach the
   patient's opted-in contacts once per episode.

Timing: step *k* is due ``delay(k) - delay(k-1)`` after step *k-1* was actually sent (step 0:
``delay(0)`` after the alert opened), so a held or late step does not make every later one due at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from cloud.alerts import escalation_queries as q
from cloud.alerts.channels import MessageError, queue_message
from cloud.alerts.channels.render import zone_of
from cloud.alerts.delivery import alert_message
from cloud.alerts.escalation_schedule import OnCallSchedule, Shift, in_window, quiet_hours_end

log = logging.getLogger(__name__)
DEFAULT_MAX_ATTEMPTS = 3
"""Attempts per escalation message: with the sender's backoff (2 s, 4 s) a dead channel gives up within
seconds and the next step is reached instead of a retry schedule that runs for a day."""
_MAX_ROUNDS = 5
"""Claims of ``limit`` escalations per pass; the rest wait for the next pass."""
_RETRY_AFTER_ERROR = timedelta(minutes=1)


@dataclass(slots=True)
class EscalationReport:
    stopped: int = 0
    cancelled: int = 0
    """Messages of stopped escalations that were not sent yet."""
    started: int = 0
    steps: int = 0
    messages: int = 0
    held: int = 0
    """Steps held by quiet hours this pass."""
    fell_back: int = 0
    """Steps that reached nobody or whose messages all failed: the next one followed at once."""
    patient_messages: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.stopped or self.started or self.steps or self.patient_messages or self.errors)


@dataclass(frozen=True, slots=True)
class Target:
    subject: str
    channel: str
    address: str | None
    webhook_id: int | None = None


def run_escalations(conn: Any, now: datetime | None = None, *, limit: int = 100,
                    max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> EscalationReport:
    """One escalation pass as of ``now``. ``conn``: autocommit (each part is its own transaction)."""
    now = now or datetime.now(UTC)
    report = EscalationReport()
    stopped = q.stop_finished(conn, now)
    report.stopped, report.cancelled = len(stopped), int(stopped[0]["cancelled"]) if stopped else 0
    report.started = len(q.start_escalations(conn, now))
    policies: dict[int, dict[str, Any]] = {}  # immutable rows: safe to keep for the pass
    for _ in range(_MAX_ROUNDS):
        with conn.transaction():
            claimed = q.claim_due(conn, now, limit)
            for escalation in claimed:
                try:
                    with conn.transaction():
                        _step(conn, escalation, policies, now, max_attempts, report)
                except (MessageError, ValueError, psycopg.DataError, psycopg.IntegrityError) as err:
                    # One escalation that cannot go on (a message that cannot be rendered, a zone name written
                    # past the API's check) waits and says why; the others in the claim go on.
                    report.errors.append(f"escalation {escalation['id']}: {err}")
                    log.error("escalation %s: %s", escalation["id"], err)
                    q.update_escalation(conn, escalation["id"], last_note=f"error: {err}"[:500],
                                        next_at=now + _RETRY_AFTER_ERROR)
        if len(claimed) < limit:
            break
    report.patient_messages = notify_patients(conn, now, limit=limit)
    return report


def _step(conn: Any, e: dict[str, Any], policies: dict[int, dict[str, Any]], now: datetime, max_attempts: int,
          report: EscalationReport) -> None:
    alert = q.lock_alert_shared(conn, e["alert_id"])
    reason = q.stop_reason(conn, e["id"], now)
    if reason is not None:
        q.update_escalation(conn, e["id"], stopped_at=now, stop_reason=reason, next_at=None)
        report.stopped += 1
        return
    if e["policy_id"] not in policies:
        policies[e["policy_id"]] = q.policy_with_steps(conn, e["policy_id"])
    policy = policies[e["policy_id"]]
    steps = policy["steps"]
    repeating = e["next_step"] >= e["step_count"]
    if repeating and e["repeats"] >= policy["repeat_max"]:
        q.update_escalation(conn, e["id"], stopped_at=now, stop_reason="exhausted", next_at=None)
        report.stopped += 1
        return
    if alert["severity"] != "critical" and policy["quiet_start"] is not None:
        ends = quiet_hours_end(now, policy["timezone"], policy["quiet_start"], policy["quiet_end"])
        if ends is not None:
            if e["next_at"] != ends:
                q.update_escalation(conn, e["id"], next_at=ends,
                                    last_note=f"held by quiet hours until {ends.isoformat()}")
            report.held += 1
            return
    index = e["step_count"] - 1 if repeating else e["next_step"]
    step = steps[index]
    targets, unreachable = resolve_targets(conn, e["care_team_id"], step, now)
    kind = "escalation" if index > 0 or repeating else "alert"
    base = alert["opened_at"] if e["episode"] == 0 else e["started_at"]
    context = {"step": index + 1, "minutes": max(0, int((now - base).total_seconds() // 60))}
    queued = 0
    for target in targets:
        if target.channel == "webhook":
            payload = alert_message(alert, alert["status"], now).model_dump_json().encode()
            q.insert_webhook_message(conn, webhook_id=target.webhook_id, alert_id=alert["id"], status=alert["status"],
                                     payload=payload, recipient=target.subject, kind=kind, escalation_id=e["id"],
                                     step=index, max_attempts=max_attempts, now=now)
        else:
            queue_message(conn, channel=target.channel, address=target.address, alert=alert,
                          recipient=target.subject, audience="care_team", kind=kind, context=context,
                          escalation_id=e["id"], step=index, max_attempts=max_attempts, now=now)
        queued += 1
    report.steps += 1
    report.messages += queued
    note = (f"step {index + 1}: " + "; ".join(unreachable)) if unreachable else None
    if queued == 0:
        note = f"step {index + 1} reached nobody" + (f" ({'; '.join(unreachable)})" if unreachable else "")
        log.warning("escalation %s of alert %s: %s", e["id"], alert["id"], note)
    fell_back = e["next_step"] < e["step_count"] and e["next_at"] is not None and e["next_at"] > now
    if fell_back:
        report.fell_back += 1
        note = f"step {e['sent_step'] + 1} failed on every channel; " + (note or f"step {index + 1} sent")
    if repeating:
        repeats = e["repeats"] + 1
        more = repeats < policy["repeat_max"]
        q.update_escalation(conn, e["id"], repeats=repeats, last_sent_at=now, last_note=note,
                            next_at=now + timedelta(minutes=policy["repeat_every_minutes"]) if more else None,
                            **({} if more else {"stopped_at": now, "stop_reason": "exhausted"}))
        return
    following = index + 1
    if following < e["step_count"]:
        wait = timedelta(seconds=steps[following]["delay_s"] - step["delay_s"])
        next_at = now if queued == 0 else now + wait
        if queued == 0:
            report.fell_back += 1
        q.update_escalation(conn, e["id"], next_step=following, sent_step=index, last_sent_at=now,
                            last_note=note, next_at=next_at)
    elif policy["repeat_max"] > 0:
        q.update_escalation(conn, e["id"], next_step=following, sent_step=index, last_sent_at=now, last_note=note,
                            next_at=now + timedelta(minutes=policy["repeat_every_minutes"]))
    else:
        q.update_escalation(conn, e["id"], next_step=following, sent_step=index, last_sent_at=now, last_note=note,
                            next_at=None, stopped_at=now, stop_reason="exhausted")


def resolve_targets(conn: Any, team: str, step: dict[str, Any], now: datetime) -> tuple[list[Target], list[str]]:
    """Who a step reaches, one :class:`Target` per person and channel with somewhere to send it, and
    why anyone named was left out (no such contact, nobody on call, no address for a channel)."""
    unreachable: list[str] = []
    if step["target_type"] == "person":
        people = q.contacts(conn, team, subjects=[step["target"]])
        if not people:
            unreachable.append(f"{step['target']} is not a contact")
    elif step["target_type"] == "role":
        people = q.contacts(conn, team, role=step["target"])
        if not people:
            unreachable.append(f"no contact has the role {step['target']}")
    else:
        on_call = on_call_now(conn, team, step["target"], now)
        people = q.contacts(conn, team, subjects=on_call) if on_call else []
        if not on_call:
            unreachable.append(f"nobody is on call as {step['target']}")
        elif len(people) < len(on_call):
            missing = sorted(set(on_call) - {p["subject"] for p in people})
            unreachable.append(f"on call but not a contact: {', '.join(missing)}")
    targets = []
    for person in people:
        for channel in step["channels"]:
            if channel == "webhook":
                if person["webhook_id"] is None:
                    unreachable.append(f"{person['subject']} has no webhook")
                    continue
                targets.append(Target(person["subject"], channel, None, person["webhook_id"]))
                continue
            address = person["email"] if channel == "email" else person["phone"]
            if not address:
                unreachable.append(f"{person['subject']} has no {'e-mail address' if channel == 'email' else 'phone'}")
                continue
            targets.append(Target(person["subject"], channel, address))
    return targets, unreachable


def on_call_now(conn: Any, team: str, role: str, now: datetime) -> list[str]:
    row = q.schedule(conn, team, role)
    if row is None:
        return []
    schedule = OnCallSchedule(role=role, timezone=row["timezone"], rotation=tuple(row["rotation"]),
                              rotation_start=row["rotation_start"], rotation_hours=row["rotation_hours"],
                              shifts=tuple(Shift(**s) for s in row["shifts"]))
    return schedule.on_call(now)


def notify_patients(conn: Any, now: datetime, *, limit: int = 100) -> int:
    """Queue the patient messages that are due; return how many messages were queued. Each alert
    episode is claimed by inserting its ``patient_notifications`` row (the primary key lets one
    scheduler win) in the transaction that queues its messages."""
    queued = 0
    for candidate in q.patient_message_candidates(conn, now, limit):
        if candidate["send_from"] is not None:
            local = now.astimezone(zone_of(candidate["timezone"])).time()
            if not in_window(local, candidate["send_from"], candidate["send_until"]):
                continue  # outside the patient's hours: a later pass sends it
        try:
            queued += _notify_patient(conn, candidate, now)
        except (MessageError, psycopg.DataError, psycopg.IntegrityError) as err:
            log.error("patient message for alert %s: %s", candidate["alert_id"], err)
    return queued


def _notify_patient(conn: Any, candidate: dict[str, Any], now: datetime) -> int:
    with conn.transaction():
        if not q.claim_patient_notification(conn, candidate["alert_id"], candidate["episode"], candidate["kind"],
                                            now):
            return 0
        alert = q.lock_alert_shared(conn, candidate["alert_id"])
        sent = 0
        for contact in q.active_patient_contacts(conn, candidate["patient_id"], alert["opened_at"]):
            queue_message(conn, channel=contact["channel"], address=contact["address"], alert=alert,
                          recipient=f"patient:{candidate['patient_id']}", audience="patient",
                          kind=candidate["kind"], context=dict(candidate["context"]), now=now)
            sent += 1
        q.set_patient_notification_count(conn, candidate["alert_id"], candidate["episode"], sent)
        return sent
