"""The words of a message: subject, plain text, HTML and a short text (SMS, ≤ 320 characters).

Care-team messages (kinds ``alert`` and ``escalation``) name the patient (display name and id), the
reading in human units (``mmHg``, never the UCUM code ``mm[Hg]``), the rule, when it was measured in
the patient's own time zone, the severity and a deep link. Patient messages (``patient_missing_data``,
``patient_repeat_reading``) are plain and kind, with no clinical terms and no link. Everything that
came from data is escaped in the HTML.

Rendering is pure: :class:`MessageFacts` in, :class:`RenderedMessage` out.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloud.alerts.channels.errors import MessageError
from gateway.metrics import METRICS, human_unit
from gateway.metrics import humanise_units as humanise

SMS_MAX = 320
"""Two concatenated SMS segments of GSM-7 text: more is split by carriers unpredictably."""
CARE_TEAM_KINDS = ("alert", "escalation")
PATIENT_KINDS = ("patient_missing_data", "patient_repeat_reading")
KINDS = CARE_TEAM_KINDS + PATIENT_KINDS

_DECIMALS = {"mm[Hg]": 0, "mg/dL": 0, "/min": 0, "%": 0, "kg": 1, "Cel": 1, "kg/m2": 1}
_LABELS = {"systolic": "systolic", "diastolic": "diastolic", "mean_arterial": "mean arterial pressure",
           "pulse_rate": "pulse", "glucose": "glucose", "body_weight": "weight", "bmi": "BMI", "height": "height",
           "heart_rate": "heart rate", "spo2": "oxygen saturation", "spo2_pulse_rate": "pulse",
           "pulse_amplitude_index": "perfusion index", "body_temperature": "temperature"}
_KIND_NAMES = {"blood_pressure": "blood pressure", "glucose": "glucose", "body_weight": "weight",
               "heart_rate": "heart rate", "pulse_oximetry": "oxygen saturation",
               "body_temperature": "temperature"}
# What a patient calls the device, and what they are asked to measure again.
_DEVICE_NAMES = {"blood_pressure": "blood pressure cuff", "glucose": "glucose meter", "body_weight": "scale",
                 "heart_rate": "heart rate monitor", "pulse_oximetry": "pulse oximeter",
                 "body_temperature": "thermometer"}
_MEASURE_AGAIN = {"blood_pressure": "repeat your blood pressure", "glucose": "check your blood sugar again",
                  "body_weight": "weigh yourself again", "pulse_oximetry": "measure your oxygen again",
                  "body_temperature": "take your temperature again"}
_REPEAT_MINUTES = {"blood_pressure": 5, "glucose": 15}


def format_value(metric: str, value: float) -> str:
    unit = METRICS[metric].unit if metric in METRICS else ""
    decimals = _DECIMALS.get(unit, 2)
    number = f"{value:.{decimals}f}" if decimals else f"{round(value):d}"
    return f"{number} {human_unit(unit)}".strip()


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What a message says about an alert; built by the outbox from the database."""

    alert_id: int
    patient_id: str
    patient_name: str | None
    timezone: str | None
    """IANA name from the patient's record; unknown or missing: UTC."""
    severity: str
    status: str
    rule_description: str
    message: str
    reading_kind: str
    opened_at: datetime
    measured_at: datetime | None = None
    metric: str | None = None
    value: float | None = None
    reading: Mapping[str, float] = field(default_factory=dict)
    """Every value of the reading that triggered the alert (systolic, diastolic and pulse together)."""
    category: str = "clinical"


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    subject: str
    text: str
    html: str
    short: str
    """For SMS and voice: at most :data:`SMS_MAX` characters, the link included when there is one."""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RenderedMessage:
        return cls(**json.loads(data))


def zone_of(name: str | None) -> tzinfo:
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return UTC


def local_time(at: datetime, zone_name: str | None) -> str:
    """``Mon 07 Dec 2026 14:05 (Europe/Berlin)``: the patient's wall clock, and which clock it is."""
    zone = zone_of(zone_name)
    name = zone_name if zone is not UTC else "UTC"
    return f"{at.astimezone(zone):%a %d %b %Y %H:%M} ({name})"


def reading_text(facts: MessageFacts) -> str | None:
    """``blood pressure 190/125 mmHg, pulse 70 /min``; None when the alert has no reading (missing data)."""
    values = dict(facts.reading)
    if not values and facts.metric is not None and facts.value is not None and facts.metric in METRICS:
        values = {facts.metric: facts.value}
    if not values:
        return None
    parts = []
    if "systolic" in values and "diastolic" in values:
        parts.append(f"blood pressure {round(values.pop('systolic')):d}/"
                     f"{format_value('diastolic', values.pop('diastolic'))}")
    for metric, value in sorted(values.items(), key=lambda mv: list(_LABELS).index(mv[0]) if mv[0] in _LABELS else 99):
        parts.append(f"{_LABELS.get(metric, metric.replace('_', ' '))} {format_value(metric, value)}")
    return ", ".join(parts)


def _headline(description: str) -> str:
    """The rule's name without its criteria: 'Hypertensive crisis' of 'Hypertensive crisis: systolic >= 180 ...'."""
    return description.split(":", 1)[0].strip() or description


def _detail(facts: MessageFacts) -> str:
    """The alert's own message without the rule's description it starts with, in human units."""
    message = facts.message
    if message.startswith(facts.rule_description):
        message = message[len(facts.rule_description):].lstrip(" :")
    return humanise(message)


def _patient(facts: MessageFacts) -> str:
    return f"{facts.patient_name} (patient {facts.patient_id})" if facts.patient_name else f"patient {facts.patient_id}"


def _minutes_waiting(facts: MessageFacts, context: Mapping[str, Any], now: datetime) -> int:
    if "minutes" in context:
        return int(context["minutes"])
    return max(0, int((now - facts.opened_at).total_seconds() // 60))


def _fit(pieces: list[str], tail: str | None, limit: int = SMS_MAX, sep: str = ". ") -> str:
    """Pieces joined, the last ones dropped (then the text cut) until it fits with ``tail`` (the link) whole."""
    tail_part = f" {tail}" if tail else ""
    room = limit - len(tail_part)
    while len(pieces) > 1 and len(sep.join(pieces)) > room:
        pieces = pieces[:-1]
    text = sep.join(pieces)
    if len(text) > room:
        text = text[: max(0, room - 1)].rstrip() + "…"
    return text + tail_part


def render(kind: str, facts: MessageFacts, *, link: str | None = None, context: Mapping[str, Any] | None = None,
           now: datetime | None = None, link_hours: float = 24) -> RenderedMessage:
    """The message of ``kind`` about ``facts``. ``context``: ``minutes`` (escalation: how long it has been
    waiting; patient_repeat_reading: when to measure again), ``days`` (patient_missing_data), ``step``."""
    context = context or {}
    now = now or datetime.now(UTC)
    if kind in CARE_TEAM_KINDS:
        message = _care_team(kind, facts, link, context, now, link_hours)
    elif kind == "patient_missing_data":
        message = _patient_missing_data(facts, context, now)
    elif kind == "patient_repeat_reading":
        message = _patient_repeat_reading(facts, context)
    else:
        raise MessageError(f"unknown message kind {kind!r} (one of {', '.join(KINDS)})")
    # The subject is a mail header: a line break from data (a patient name, a rule description) would make
    # EmailMessage refuse it, so the message would never go out. One line, whitespace runs collapsed.
    return replace(message, subject=" ".join(message.subject.split()))


def _care_team(kind: str, facts: MessageFacts, link: str | None, context: Mapping[str, Any], now: datetime,
               link_hours: float) -> RenderedMessage:
    severity = facts.severity.upper() if facts.severity == "critical" else facts.severity
    headline = _headline(facts.rule_description)
    reading = reading_text(facts)
    when = local_time(facts.measured_at or facts.opened_at, facts.timezone)
    waited = _minutes_waiting(facts, context, now) if kind == "escalation" else None
    lead = (f"Not acknowledged after {waited} min: " if waited is not None else "") + f"{facts.severity} alert"
    subject = (f"[RPM {severity}{', escalated' if waited is not None else ''}] {headline}"
               f" - {facts.patient_name or facts.patient_id}")
    rows = [("Patient", _patient(facts)), ("Reading", reading or "none (see detail)"),
            ("Measured" if facts.measured_at else "Opened", when), ("Rule", facts.rule_description),
            ("Severity", facts.severity), ("Status", facts.status)]
    detail = _detail(facts)
    if detail:
        rows.append(("Detail", detail))
    if waited is not None and "step" in context:
        rows.append(("Escalation step", str(context["step"])))
    link_note = f"sign-in required; the link works once, for {link_hours:g} h"
    text_lines = [f"{lead.capitalize()} for {_patient(facts)}.", ""]
    text_lines += [f"{label}: {value}" for label, value in rows]
    if link:
        text_lines += ["", f"Open the alert in the workspace ({link_note}):", link]
    text_lines += ["", f"Alert {facts.alert_id}. Acknowledge it in the workspace to stop further messages."]
    e = html.escape
    cells = "".join(f"<tr><th align=\"left\">{e(label)}</th><td>{e(value)}</td></tr>" for label, value in rows)
    button = (f"<p><a href=\"{e(link, quote=True)}\">Open the alert in the workspace</a> ({e(link_note)})</p>"
              if link else "")
    body_html = (f"<!DOCTYPE html><html><body><p><strong>{e(lead.capitalize())}</strong> for {e(_patient(facts))}.</p>"
                 f"<table>{cells}</table>{button}<p>Alert {facts.alert_id}. Acknowledge it in the workspace to stop"
                 f" further messages.</p></body></html>")
    short_pieces = [f"RPM {severity}" + (f" not acknowledged after {waited} min" if waited is not None else ""),
                    f"{facts.patient_name or 'patient'} ({facts.patient_id})", reading or _detail(facts),
                    headline, when]
    return RenderedMessage(subject=subject, text="\n".join(text_lines) + "\n", html=body_html,
                           short=_fit(short_pieces, link))


def _hello(facts: MessageFacts) -> str:
    return f"Hello {facts.patient_name}," if facts.patient_name else "Hello,"


def _patient_message(facts: MessageFacts, subject: str, paragraphs: list[str]) -> RenderedMessage:
    text = "\n\n".join([_hello(facts), *paragraphs]) + "\n"
    e = html.escape
    body_html = ("<!DOCTYPE html><html><body>" + "".join(f"<p>{e(p)}</p>" for p in [_hello(facts), *paragraphs])
                 + "</body></html>")
    return RenderedMessage(subject=subject, text=text, html=body_html, short=_fit(paragraphs[:-1], None, sep=" "))


def _patient_missing_data(facts: MessageFacts, context: Mapping[str, Any], now: datetime) -> RenderedMessage:
    device = _DEVICE_NAMES.get(facts.reading_kind, "device")
    if "days" in context:
        hours = 24.0 * int(context["days"])
    elif facts.measured_at is not None:
        hours = (now - facts.measured_at).total_seconds() / 3600
    else:
        hours = float(facts.value or 0)  # a missing-data alert keeps the gap in hours as its value
    days, whole_hours = int(hours // 24), int(hours)
    gap = (f"{days} day{'s' if days != 1 else ''}" if days >= 1
           else f"{whole_hours} hour{'s' if whole_hours != 1 else ''}" if whole_hours >= 1 else "a while")
    paragraphs = [f"Your {device} has not sent a reading for {gap}.",
                  f"Please take a reading today, with the {device} close to your home hub.",
                  "If something is not working, call your care team and we will help.",
                  "Thank you, your care team"]
    return _patient_message(facts, f"Your {device} has not sent a reading for {gap}", paragraphs)


def _patient_repeat_reading(facts: MessageFacts, context: Mapping[str, Any]) -> RenderedMessage:
    minutes = int(context.get("minutes", _REPEAT_MINUTES.get(facts.reading_kind, 5)))
    what = _KIND_NAMES.get(facts.reading_kind, "last")
    again = _MEASURE_AGAIN.get(facts.reading_kind, "take the reading again")
    first = (f"Your last {what} reading was high." if facts.reading_kind == "blood_pressure"
             else f"Your last {what} reading was outside the range your care team set.")
    paragraphs = [first,
                  f"Please sit quietly and {again} in {minutes} minutes. Your care team can see your readings."]
    if facts.reading_kind == "blood_pressure":
        paragraphs.append("If you have chest pain, shortness of breath, back pain, numbness or weakness, a change"
                          " in your vision or trouble speaking, call your local emergency number now.")
    paragraphs.append("Thank you, your care team")
    return _patient_message(facts, f"Please {again} in {minutes} minutes", paragraphs)
