"""Alert rules (data), evaluation, lifecycle and delivery.

``rules`` per-patient overrides of the catalogue (``cloud.db.alert_rules``), ``evaluate`` pure
verdicts of a rule on a reading, ``lifecycle`` the database state machine (one open alert per
patient and rule; critical ones pending review until a person looks), ``new_readings`` the rules on
newly stored readings (called by ``cloud.effects`` in ingest's transaction), ``delivery`` the outbox
sender (MQTT, webhooks, e-mail, the SMS/voice provider), ``channels`` what each message says and how
it travels, ``escalation`` the care teams' policies and on-call steps (run by the scheduler before
each delivery pass), ``scheduler`` the time-based rules and the delivery loop, ``service`` the Python
API the clinician API calls.
"""

from cloud.errors import CloudError


class AlertsError(CloudError):
    """Base of the alerts' errors."""


class AlertNotFound(AlertsError):
    pass


class RuleNotFound(AlertsError):
    pass


class InvalidOverride(AlertsError):
    """A per-patient override that names an unknown metric, a bad value or a bad setting."""


class AlertStateError(AlertsError):
    """The change is not allowed in the alert's current status (e.g. acknowledging a resolved alert)."""
