"""The patient's page in plain words: what each summary the care team reads means, said to the patient.

Pure: summaries in (the dicts :mod:`cloud.api.routes.summaries` answers, so the numbers are those the
workspace and the alert rules use), sentences out. Nothing here computes a clinical number of its own;
it chooses words for numbers computed elsewhere and for the thresholds of the rules in force:

- blood pressure: the average over the ``bp_stage2_average`` rule's window (7 days up to the latest
  reading by default) against that rule's thresholds, and the ACC/AHA category of that average;
- glucose: the share of readings in 70-180 mg/dL over 14 days (International Consensus on Time in
  Range) against the consensus goal (> 70 %), and the share below 70 mg/dL (goal < 4 %);
- weight: the gain over the lowest reading of the 7 days before the latest (as ``weight_gain_7d``
  measures it) against that rule's threshold, and the 24-hour gain against ``weight_gain_24h``'s;
- oxygen level (SpO2) and temperature: the 7-day time below 90 % and the fever band (>= 38.0 °C).

Every number is written with its unit the way people write it (:func:`gateway.metrics.human_unit`);
never a UCUM code. Status is the worse of what the summary says and what the open alerts say
(``urgent``: an open critical alert or a crisis value; ``attention``: off target or an open alert;
``ok``; ``unknown``: nothing to judge).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloud.db.alert_rules import Rule
from gateway.metrics import METRICS, human_unit

STATUS_ORDER = ("unknown", "ok", "attention", "urgent")


@dataclass(frozen=True, slots=True)
class Group:
    """One thing the patient measures: its title, the reading kind the rules and devices use, the charts."""

    key: str
    title: str
    reading_kind: str
    charts: tuple[tuple[str, str], ...]
    """(metric, label) for GET /v1/patients/{id}/trends/{metric}."""


GROUPS = (
    Group("blood_pressure", "Blood pressure", "blood_pressure",
          (("systolic", "Systolic"), ("diastolic", "Diastolic"), ("pulse_rate", "Pulse"))),
    Group("glucose", "Glucose", "glucose", (("glucose", "Glucose"),)),
    Group("weight", "Weight", "body_weight", (("body_weight", "Weight"),)),
    Group("heart_rate", "Heart rate", "heart_rate", (("heart_rate", "Heart rate"),)),
    Group("spo2", "Oxygen level", "pulse_oximetry", (("spo2", "Oxygen level (SpO₂)"), ("spo2_pulse_rate", "Pulse"))),
    Group("temperature", "Temperature", "body_temperature", (("body_temperature", "Temperature"),)),
)
GROUP_OF_KIND = {g.reading_kind: g for g in GROUPS}

# The kind of reading each device profile gives (the gateway's profile table names them; the cloud keeps the
# name on the device row). Serial profiles: ASTM glucose meters, A&D scales, ANT+ heart-rate straps, TaiDoc cuffs.
PROFILE_KIND = {"ble.blood_pressure": "blood_pressure", "ble.glucose": "glucose", "ble.weight_scale": "body_weight",
                "ble.heart_rate": "heart_rate", "ble.pulse_oximeter": "pulse_oximetry",
                "ble.thermometer": "body_temperature", "serial.astm": "glucose", "serial.ad_scale": "body_weight",
                "serial.ant_hrm": "heart_rate", "serial.taidoc": "blood_pressure"}
DEVICE_WORDS = {"blood_pressure": "Blood pressure monitor", "glucose": "Glucose meter", "body_weight": "Scale",
                "heart_rate": "Heart rate monitor", "pulse_oximetry": "Pulse oximeter",
                "body_temperature": "Thermometer"}
SCOPE_WORDS = {"readings": "readings", "alerts": "alerts", "twin": "your record summary"}
BP_CATEGORY_WORDS = {"normal": "normal", "elevated": "elevated",
                     "stage_1_hypertension": "high blood pressure (stage 1)",
                     "stage_2_hypertension": "high blood pressure (stage 2)",
                     "hypertensive_crisis": "very high: a hypertensive crisis"}
GLUCOSE_GOAL_IN_RANGE = 70.0
GLUCOSE_GOAL_BELOW_70 = 4.0
FEVER_CEL = 38.0


def unit_text(metric: str) -> str:
    """The unit of a metric as a patient reads it: ``mmHg``, ``°C``; a rate per minute is in beats."""
    unit = human_unit(METRICS[metric].unit) if metric in METRICS else ""
    return "beats per minute" if unit == "/min" else unit


def number(value: float, digits: int = 0) -> str:
    """``137.6`` -> ``138`` (``digits`` decimals, none by default)."""
    return f"{round(float(value), digits):.{digits}f}"


def with_unit(value: float, metric: str, digits: int = 0) -> str:
    return f"{number(value, digits)} {unit_text(metric)}"


def zone_name(name: str | None) -> str:
    """The patient's time zone, or UTC when there is none or it is not a known zone (as the summaries)."""
    try:
        return ZoneInfo(name).key if name else "UTC"
    except (ValueError, ZoneInfoNotFoundError):
        return "UTC"


def worse(*statuses: str) -> str:
    return max(statuses, key=STATUS_ORDER.index)


def alert_status(open_alerts: Iterable[Mapping[str, Any]], reading_kind: str) -> str:
    """From the open (not resolved) alerts of this reading kind: critical -> urgent, any other -> attention."""
    severities = {a["severity"] for a in open_alerts if a["reading_kind"] == reading_kind}
    if "critical" in severities:
        return "urgent"
    return "attention" if severities else "unknown"


def target_words(rule: Rule | None) -> str:
    """Whose target: one the care team set for this patient (an override), or the usual one (the catalogue)."""
    return "the target your care team set" if rule is not None and rule.overridden else "the usual target"


def _window_words(days: float, until: datetime | None, now: datetime, zone: ZoneInfo) -> str:
    """"this week" when the window ends about now; else the days up to the last reading, named by date."""
    span = "this week" if days == 7 else f"over the last {number(days)} days"
    if until is None or now - until <= timedelta(days=1):
        return span
    return f"in the {number(days)} days up to your last reading on {until.astimezone(zone):%-d %B}"


def _beside(value: float, threshold: float | None) -> str:
    """``value`` rounded, or with a decimal where rounding would put it on the other side of ``threshold``:
    139.6 beside "below 140" is written 139.6, not 140, so the words never contradict the verdict."""
    whole = round(float(value))
    if threshold is not None and (whole >= threshold) != (float(value) >= threshold):
        return number(value, 1)
    return number(value)


def _threshold(rule: Rule | None, metric: str) -> float | None:
    for condition in rule.conditions if rule else ():
        if condition.metric == metric:
            return condition.value
    return None


def blood_pressure(summary: Mapping[str, Any], rule: Rule | None, now: datetime, tz: str) -> dict[str, Any]:
    """From GET .../summaries/blood-pressure and the ``bp_stage2_average`` rule in force."""
    latest = summary.get("latest")
    average = summary.get("rule_average")
    out: dict[str, Any] = {"latest": None, "sentence": "No blood pressure readings yet.", "status": "unknown"}
    if latest and latest.get("systolic") is not None and latest.get("diastolic") is not None:
        out["latest"] = {"text": f"{number(latest['systolic'])}/{number(latest['diastolic'])} {unit_text('systolic')}",
                         "at": latest["measured_at"]}
    if not average:
        if out["latest"]:
            out["sentence"] = f"Your latest blood pressure was {out['latest']['text']}."
            out["status"] = "ok"
        return out
    zone = ZoneInfo(tz)
    systolic, diastolic = average["systolic"], average["diastolic"]
    window = _window_words(float(average.get("window_days") or 7), average.get("until"), now, zone)
    high_systolic, high_diastolic = _threshold(rule, "systolic"), _threshold(rule, "diastolic")
    text = (f"{_beside(systolic, high_systolic)}/{_beside(diastolic, high_diastolic)} {unit_text('systolic')}")
    sentence = f"Your blood pressure {window} averaged {text}"
    status = "ok"
    if rule is not None and rule.enabled and high_systolic is not None and high_diastolic is not None:
        # The rule's own conditions on the rule's own average: the verdict the alert reaches, in words.
        above = any(c.triggered(average[c.metric]) for c in rule.conditions if c.metric in average)
        limit = f"below {number(high_systolic)}/{number(high_diastolic)} {unit_text('systolic')}"
        sentence += f": {'above' if above else 'within'} {target_words(rule)} ({limit})."
        status = "attention" if above else "ok"
    else:
        sentence += "."
    category = average.get("category")
    if category in BP_CATEGORY_WORDS:
        sentence += f" Doctors call an average like this {BP_CATEGORY_WORDS[category]}."
        if category == "hypertensive_crisis":
            status = "urgent"
        elif category in ("stage_1_hypertension", "stage_2_hypertension") and rule is None:
            status = "attention"
    readings = int(average.get("readings") or 0)
    needed = int(average.get("min_readings") or 0)
    if needed and readings < needed:
        sentence += (f" It comes from {readings} reading{'s' if readings != 1 else ''}; your care team judges the"
                     f" average from {needed} or more.")
    out.update(sentence=sentence, status=status)
    return out


def glucose(summary: Mapping[str, Any], latest: Mapping[str, Any] | None) -> dict[str, Any]:
    """From GET .../summaries/glucose (14 days) and the latest glucose value."""
    out: dict[str, Any] = {"latest": None, "status": "unknown"}
    if latest:
        out["latest"] = {"text": with_unit(latest["value"], "glucose"), "at": latest["measured_at"]}
    days = int(summary.get("days") or 14)
    ranges = summary.get("time_in_ranges_percent")
    if not summary.get("readings") or not ranges:
        out["sentence"] = f"No glucose readings in the last {days} days."
        return out
    in_range = float(ranges["from_70_to_180"])
    low = float(ranges["below_54"]) + float(ranges["from_54_to_69"])
    unit = unit_text("glucose")
    sentence = (f"In the last {days} days {number(in_range)} % of your glucose readings were in the target range"
                f" (70 to 180 {unit})")
    meets = in_range > GLUCOSE_GOAL_IN_RANGE
    sentence += ": that meets the goal of more than 70 %." if meets else ", below the goal of more than 70 %."
    if low > 0:
        sentence += f" {number(low)} % were low (below 70 {unit})."
    if summary.get("mean_mg_dl") is not None:
        sentence += f" Your average was {with_unit(summary['mean_mg_dl'], 'glucose')}."
    out.update(sentence=sentence, status="ok" if meets and low < GLUCOSE_GOAL_BELOW_70 else "attention")
    return out


def weight(summary: Mapping[str, Any], rules: Mapping[str, Rule]) -> dict[str, Any]:
    """From GET .../summaries/weight and the weight-gain rules in force."""
    if summary.get("latest_kg") is None:
        return {"latest": None, "sentence": "No weight readings yet.", "status": "unknown"}
    kg = unit_text("body_weight")
    out: dict[str, Any] = {"latest": {"text": with_unit(summary["latest_kg"], "body_weight", 1),
                                      "at": summary["latest_at"]}, "status": "ok"}
    sentence = f"Your latest weight is {out['latest']['text']}"
    changes = {c["label"]: c for c in summary.get("changes") or ()}
    week, day = changes.get("7_days"), changes.get("1_day")
    status = "ok"
    if week is None or week.get("change_kg") is None:
        sentence += "."
    else:
        gain = float(week["change_kg"])
        if gain <= 0:
            sentence += ", no more than your lowest in the 7 days before it: no gain."
        else:
            sentence += f", {number(gain, 1)} {kg} more than your lowest in the 7 days before it"
            sentence += _gain_words(gain, week, rules.get("weight_gain_7d"), "")
            if _reached(gain, week, rules.get("weight_gain_7d")):
                status = "attention"
    if day is not None and day.get("change_kg") is not None and _reached(float(day["change_kg"]), day,
                                                                           rules.get("weight_gain_24h")):
        sentence += (f" Since the day before it went up {number(float(day['change_kg']), 1)} {kg}"
                     f"{_gain_words(float(day['change_kg']), day, rules.get('weight_gain_24h'), ' in a day')}")
        status = "attention"
    out.update(sentence=sentence, status=status)
    return out


def _reached(gain: float, change: Mapping[str, Any], rule: Rule | None) -> bool:
    """Whether the gain is at the threshold of an enabled rate rule (the rules' ``>=``)."""
    threshold = change.get("threshold_kg")
    return rule is not None and rule.enabled and threshold is not None and gain > 0 and gain >= float(threshold)


def _gain_words(gain: float, change: Mapping[str, Any], rule: Rule | None, per: str) -> str:
    threshold = change.get("threshold_kg")
    if threshold is None or rule is None or not rule.enabled:
        return "."
    whose = "your care team set" if rule.overridden else "your care team usually watches for"
    where = "at or above" if gain >= float(threshold) else "within"
    return f": {where} the {number(float(threshold), 1)} {unit_text('body_weight')} gain{per} {whose}."


def heart_rate(series: Sequence[tuple[datetime, float]], latest: Mapping[str, Any] | None,
               days: int) -> dict[str, Any]:
    out: dict[str, Any] = {"latest": None, "status": "unknown",
                           "sentence": f"No heart rate readings in the last {days} days."}
    if latest:
        out["latest"] = {"text": with_unit(latest["value"], "heart_rate"), "at": latest["measured_at"]}
    if series:
        mean = sum(v for _, v in series) / len(series)
        out.update(sentence=f"Your heart rate averaged {with_unit(mean, 'heart_rate')} over the last {days} days.",
                   status="ok")
    return out


def oxygen(summary: Mapping[str, Any], rules: Mapping[str, Rule]) -> dict[str, Any]:
    """From GET .../summaries/oximetry (7 days) and the SpO2 rules in force."""
    days = int(summary.get("days") or 7)
    if not summary.get("readings"):
        return {"latest": None, "status": "unknown", "sentence": f"No oxygen level readings in the last {days} days."}
    out: dict[str, Any] = {"latest": {"text": with_unit(summary["latest_percent"], "spo2"),
                                      "at": summary["latest_at"]}}
    below = (summary.get("time_below") or {}).get("below_90") or {}
    minutes = float(below.get("minutes") or 0)
    sentence = f"Over the last {days} days your oxygen level averaged {with_unit(summary['mean_percent'], 'spo2')}"
    if minutes > 0:
        sentence += f"; it was below 90 % for {_minutes_words(minutes)} in all."
    else:
        sentence += "; it did not go below 90 %."
    low, critical = rules.get("spo2_low"), rules.get("spo2_critical")
    target = low.params.get("target_range") if low is not None else None
    if isinstance(target, list | tuple) and len(target) == 2:
        sentence += f" The usual range is {number(target[0])} to {number(target[1])} %."
    status = "ok"
    latest_value = float(summary["latest_percent"])
    if critical is not None and critical.enabled and any(c.triggered(latest_value) for c in critical.conditions):
        status = "urgent"
    elif minutes > 0 or (low is not None and low.enabled and any(c.triggered(latest_value) for c in low.conditions)):
        status = "attention"
    out.update(sentence=sentence, status=status)
    return out


def _minutes_words(minutes: float) -> str:
    if minutes < 90:
        whole = max(1, round(minutes))
        return f"{whole} minute{'s' if whole != 1 else ''}"
    return f"{number(minutes / 60, 1)} hours"


def temperature(summary: Mapping[str, Any]) -> dict[str, Any]:
    """From GET .../summaries/temperature (7 days)."""
    days = int(summary.get("days") or 7)
    if not summary.get("readings"):
        return {"latest": None, "status": "unknown", "sentence": f"No temperature readings in the last {days} days."}
    latest = float(summary["latest_cel"])
    out: dict[str, Any] = {"latest": {"text": with_unit(latest, "body_temperature", 1), "at": summary["latest_at"]}}
    sentence = f"Your latest temperature was {out['latest']['text']}."
    fever_days = int(summary.get("days_with_fever") or 0)
    band = with_unit(FEVER_CEL, "body_temperature", 1)
    if fever_days:
        sentence += f" You had a fever ({band} or more) on {fever_days} of the last {days} days."
    else:
        sentence += f" No fever ({band} or more) in the last {days} days."
    out.update(sentence=sentence, status="attention" if latest >= FEVER_CEL else "ok")
    return out


def charts(group: Group) -> list[dict[str, str]]:
    return [{"metric": m, "unit_text": unit_text(m), "label": label} for m, label in group.charts]


def scopes_text(scopes: Iterable[str]) -> str:
    """``["twin", "readings", "alerts"]`` -> ``readings, alerts and your record summary``."""
    given = set(scopes)
    words = [SCOPE_WORDS[s] for s in SCOPE_WORDS if s in given]
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def device_type_text(profile: str | None) -> str:
    kind = PROFILE_KIND.get(profile or "")
    return DEVICE_WORDS.get(kind or "", "Health device")


def device_name(device: Mapping[str, Any]) -> str:
    """"Omron M7" from the device record where it names itself, else what it is ("Scale")."""
    made = " ".join(str(part) for part in (device.get("manufacturer"), device.get("model")) if part)
    return made or device_type_text(device.get("profile"))


def gateway_words(gateway: Mapping[str, Any]) -> dict[str, Any]:
    """From a gateway of GET .../equipment: its state for the patient and a line that says it.

    The cloud cannot tell a gateway without internet from one switched off (its last will and its goodbye
    are the same status), so the words say what it knows: a gateway not connected with readings saved
    is waiting for internet to send them; one with nothing saved is offline."""
    state = gateway["state"]
    saved = int(gateway.get("outbox_depth") or 0)
    readings = f"{saved} reading{'s' if saved != 1 else ''} saved"
    if state == "online":
        text = "Connected" + (f" — sending {readings}" if saved else "")
        return {"state": "connected", "text": text, "since": None}
    if state == "unknown":
        return {"state": "unknown", "text": "No word from the gateway yet", "since": gateway.get("last_contact_at")}
    if saved or gateway.get("uplink_error"):
        text = f"Waiting for internet — {readings}" if saved else "Waiting for internet"
        return {"state": "waiting_for_internet", "text": text, "since": gateway.get("last_contact_at")}
    return {"state": "offline", "text": "Offline — nothing waiting to send", "since": gateway.get("last_contact_at")}


# --- the access log in words -------------------------------------------------------------------------

_WHAT = {
    "GET /v1/patients/{patient_id}": "your record",
    "GET /v1/patients/{patient_id}/readings": "your readings",
    "GET /v1/patients/{patient_id}/trends/{metric}": "charts of your readings",
    "GET /v1/patients/{patient_id}/summaries/blood-pressure": "your blood pressure readings",
    "GET /v1/patients/{patient_id}/summaries/glucose": "your glucose readings",
    "GET /v1/patients/{patient_id}/summaries/glucose/agp": "your glucose readings",
    "GET /v1/patients/{patient_id}/summaries/weight": "your weight readings",
    "GET /v1/patients/{patient_id}/summaries/oximetry": "your oxygen level readings",
    "GET /v1/patients/{patient_id}/summaries/temperature": "your temperature readings",
    "GET /v1/patients/{patient_id}/summaries/adherence": "how often you measured",
    "GET /v1/patients/{patient_id}/equipment": "your devices",
    "GET /v1/patients/{patient_id}/devices": "your devices",
    "GET /v1/patients/{patient_id}/thresholds": "your alert targets",
    "PUT /v1/patients/{patient_id}/thresholds/{rule_id}": "your alert targets",
    "DELETE /v1/patients/{patient_id}/thresholds/{rule_id}": "your alert targets",
    "GET /v1/patients/{patient_id}/twin": "your record summary",
    "GET /v1/patients/{patient_id}/twin/events": "your record summary",
    "GET /v1/patients/{patient_id}/contacts": "your contact details",
    "PUT /v1/patients/{patient_id}/contacts/{channel}": "your contact details",
    "DELETE /v1/patients/{patient_id}/contacts/{channel}": "your contact details",
    "POST /v1/patients/{patient_id}/first-time-links": "a first-time sign-in link for you",
    "POST /v1/first-time-links/{token}/redeem": "signed in with a first-time link",
    "GET /v1/patients": "your name in their list of patients",
    "GET /v1/inbox": "your alerts",
    "GET /v1/stream": "your alerts",
    "GET /fhir/Patient/{patient_id}/$everything": "your whole record (download)",
    "GET /fhir/Patient/{patient_id}": "your record",
    "GET /fhir/Observation": "your readings",
    "GET /fhir/Device": "your devices",
    "GET /fhir/Device/{device_id}": "your devices",
    "POST /v1/devices/{device_uid}/assignments": "which devices are yours",
    "DELETE /v1/devices/{device_uid}/assignments": "which devices are yours",
}


def what_words(action: str) -> str:
    """``GET /v1/patients/{patient_id}/readings`` -> ``your readings``; an action this table does not know is
    named by the part of the record its path is about."""
    if action in _WHAT:
        return _WHAT[action]
    path = action.split(" ", 1)[-1]
    if "/alerts" in path or path.startswith("/v1/alert-links"):
        return "your alerts"
    if path.startswith("/fhir"):
        return "your record"
    return "your record"


def who_words(role: str, subject: str, name: str | None, teams: Sequence[str]) -> str:
    """``Dr Ada (Team North)``: the person's name where the care team gave one, else their sign-in name."""
    if role == "link":
        return "Someone with your first-time sign-in link"
    person = name or subject
    if role == "admin":
        return f"{person} (administrator)"
    if role == "gateway":
        return f"A gateway ({subject})"
    return f"{person} ({', '.join(teams)})" if teams else person


def outcome_words(outcome: str, method: str) -> str:
    """``looked`` for an allowed read, ``changed`` for an allowed write, ``was refused`` for anything refused."""
    if outcome != "allowed":
        return "was refused"
    return "changed" if method in ("POST", "PUT", "PATCH", "DELETE") else "looked"


# --- closing the account --------------------------------------------------------------------------

CLOSURE_KEPT = (
    "Your readings, alerts and the notes your care team made stay with your care team for as long as the law on"
    " medical records requires, because they are part of the care you were given.",
    "The log of who looked at your record is kept and cannot be changed: it lets anyone check later who saw what.",
    "The shares you gave and withdrew stay on record, to show who was allowed to see your data and when.",
)
CLOSURE_REMOVED = (
    "Every care team you share with loses access: your shares are withdrawn.",
    "Your contact details for messages (e-mail, text, calls) are deleted.",
    "Your devices are unassigned, so nothing they measure is stored for you any more.",
    "You can no longer sign in to this page, and first-time sign-in links for you stop working.",
)
