"""RPM programme reports (issue 25): the programme's rules as data (``rules``), days with data per 30-day
device-supply period and clinician minutes per calendar month (``report``), and their SQL (``queries``).

Errors derive from :class:`ProgrammeError` (a ``CloudError``); the API turns each into one problem+json."""

from __future__ import annotations

from cloud.errors import CloudError


class ProgrammeError(CloudError):
    """Base of the programme package's errors."""


class ProgrammeNotFound(ProgrammeError):
    pass


class EnrolmentConflict(ProgrammeError):
    """An episode that would overlap another of the same patient."""


class TimerConflict(ProgrammeError):
    """A timer already running (start) or none running (stop), or one that ran too long to be believed."""


class InvalidTimeEntry(ProgrammeError):
    """A time entry that names an alert of another patient, or a date outside what can be counted."""
