"""The words of the messages: human units, the patient's clock, escaping, SMS length, patient texts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from cloud.alerts.channels import MessageError
from cloud.alerts.channels.render import SMS_MAX, MessageFacts, format_value, humanise, local_time, render

pytestmark = pytest.mark.unit
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
LINK = "https://rpm.example/ui/#/alerts/41?link=" + "A" * 43


def facts(**kw) -> MessageFacts:
    base = dict(alert_id=41, patient_id="p-1", patient_name="Grace Hopper", timezone="Europe/London",
                severity="critical", status="open", reading_kind="blood_pressure",
                rule_description="Hypertensive crisis: systolic >= 180 or diastolic >= 120 mmHg",
                message="Hypertensive crisis: systolic >= 180 or diastolic >= 120 mmHg: systolic 191 mm[Hg]",
                opened_at=NOW - timedelta(minutes=11), measured_at=NOW - timedelta(minutes=12),
                metric="systolic", value=191.0, reading={"systolic": 191.0, "diastolic": 97.0, "pulse_rate": 71.0})
    return MessageFacts(**{**base, **kw})


@pytest.mark.parametrize(("metric", "value", "text"), [
    ("systolic", 181.4, "181 mmHg"), ("glucose", 48.6, "49 mg/dL"), ("body_weight", 82.34, "82.3 kg"),
    ("spo2", 87.2, "87 %"), ("body_temperature", 38.26, "38.3 °C"), ("pulse_rate", 151, "151 /min"),
    ("heart_rate", 42.0, "42 /min"), ("bmi", 31.04, "31.0 kg/m²"),
])
def test_values_read_in_human_units(metric, value, text):
    assert format_value(metric, value) == text


def test_ucum_codes_in_an_alert_message_become_human_units():
    assert humanise("systolic 200 mm[Hg]; temperature 38.5 Cel; weight 180 [lb_av]; bmi 30 kg/m2") == (
        "systolic 200 mmHg; temperature 38.5 °C; weight 180 lb; bmi 30 kg/m²")


def test_local_time_is_the_patients_zone_and_unknown_zones_fall_back_to_utc():
    at = datetime(2026, 7, 1, 23, 30, tzinfo=UTC)
    assert local_time(at, "Australia/Sydney") == "Thu 02 Jul 2026 09:30 (Australia/Sydney)"
    assert local_time(at, "Mars/Olympus") == "Wed 01 Jul 2026 23:30 (UTC)"
    assert local_time(at, None) == "Wed 01 Jul 2026 23:30 (UTC)"


def test_care_team_alert_names_everything_and_never_raw_ucum():
    m = render("alert", facts(), link=LINK, now=NOW)
    for body in (m.text, m.html, m.short):
        assert "Grace Hopper" in body and "191/97 mmHg" in body and "mm[Hg]" not in body
    assert "Hypertensive crisis: systolic >= 180 or diastolic >= 120 mmHg" in m.text
    assert "Measured: Sun 01 Mar 2026 11:48 (Europe/London)" in m.text
    assert "Severity: critical" in m.text and LINK in m.text and LINK in m.short
    # The rule's description is said once, not again in the detail line.
    assert m.text.count("Hypertensive crisis: systolic >= 180") == 1
    assert m.subject == "[RPM CRITICAL] Hypertensive crisis - Grace Hopper"


def test_escalation_says_how_long_it_waited():
    m = render("escalation", facts(), link=LINK, now=NOW)
    assert m.text.startswith("Not acknowledged after 11 min: critical alert for Grace Hopper (patient p-1).")
    assert "escalated" in m.subject and "not acknowledged after 11 min" in m.short
    assert render("escalation", facts(), context={"minutes": 10}, now=NOW).text.startswith(
        "Not acknowledged after 10 min")


def test_sms_fits_in_320_characters_with_the_link_whole():
    long = facts(patient_name="Maximiliane " * 30, rule_description="A very long rule description " * 20)
    m = render("escalation", long, link=LINK, now=NOW)
    assert len(m.short) <= SMS_MAX and m.short.endswith(LINK)


def test_everything_from_data_is_escaped_in_html():
    m = render("alert", facts(patient_name="<img src=x onerror=alert(1)>", patient_id='p"&<'), link=LINK + '"x',
               now=NOW)
    assert "<img" not in m.html and "&lt;img src=x onerror=alert(1)&gt;" in m.html
    assert 'p&quot;&amp;&lt;' in m.html and 'href="' + LINK + '&quot;x"' in m.html


def test_line_breaks_from_data_never_reach_the_subject_header():
    from cloud.alerts.channels.email import build_message
    m = render("alert", facts(patient_name="Grace\r\nBcc: evil@example.com\n Hopper"), link=LINK, now=NOW)
    assert m.subject == "[RPM CRITICAL] Hypertensive crisis - Grace Bcc: evil@example.com Hopper"
    mail = build_message(m, sender="rpm@example.com", to="nurse@example.com", message_id="<1@example.com>")
    assert mail["Bcc"] is None and mail["Subject"] == m.subject


def test_missing_data_alert_without_reading_shows_the_detail():
    f = facts(severity="warning", rule_description="No blood-pressure reading for 48 h (adherence)",
              message="No blood-pressure reading for 48 h (adherence): no blood pressure reading for 73 h",
              metric=None, value=73.0, reading={}, measured_at=None)
    m = render("alert", f, link=LINK, now=NOW)
    assert "Reading: none (see detail)" in m.text and "Detail: no blood pressure reading for 73 h" in m.text
    assert m.subject == "[RPM warning] No blood-pressure reading for 48 h (adherence) - Grace Hopper"


def test_patient_missing_data_text_is_plain_and_kind():
    f = facts(severity="warning", measured_at=NOW - timedelta(days=3, hours=2), reading={})
    m = render("patient_missing_data", f, now=NOW)
    assert m.subject == "Your blood pressure cuff has not sent a reading for 3 days"
    assert m.text.startswith("Hello Grace Hopper,\n\nYour blood pressure cuff has not sent a reading for 3 days.")
    assert "care team" in m.text and "link" not in m.text.lower() and len(m.short) <= SMS_MAX
    for jargon in ("mmHg", "systolic", "alert", "hypertens", "adherence"):
        assert jargon not in m.text.lower()
    scale = render("patient_missing_data", facts(reading_kind="body_weight"), context={"days": 1}, now=NOW)
    assert "Your scale has not sent a reading for 1 day." in scale.text


def test_patient_repeat_reading_text():
    m = render("patient_repeat_reading", facts(), now=NOW)
    assert "Please sit quietly and repeat your blood pressure in 5 minutes." in m.text
    assert "emergency" in m.text and len(m.short) <= SMS_MAX
    for jargon in ("mmHg", "systolic", "crisis", "hypertens"):
        assert jargon not in m.text.lower()
    glucose = render("patient_repeat_reading", facts(reading_kind="glucose"), now=NOW)
    assert "check your blood sugar again in 15 minutes" in glucose.text and "emergency" not in glucose.text


def test_an_unknown_kind_is_a_typed_error():
    with pytest.raises(MessageError, match="unknown message kind"):
        render("telegram", facts(), now=NOW)
