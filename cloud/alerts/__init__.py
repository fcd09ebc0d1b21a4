"""Alert rules (data), evaluation, lifecycle and delivery.

``rules`` the catalogue and per-patient overrides, ``evaluate`` pure verdicts of a rule on a
reading, ``lifecycle`` the database state machine (one open alert per patient and rule), ``hook``
the ingest hook, ``delivery`` the MQTT/webhook outbox, ``scheduler`` the time-based rules and the
delivery loop, ``service`` the Python API the clinician API calls.
"""


class AlertsError(Exception):
    """Base of the alerts' errors."""


class AlertNotFound(AlertsError):
    pass


class RuleNotFound(AlertsError):
    pass


class InvalidOverride(AlertsError):
    """A per-patient override that names an unknown metric, a bad value or a bad setting."""


class AlertStateError(AlertsError):
    """The change is not allowed in the alert's current status (e.g. acknowledging a resolved alert)."""
