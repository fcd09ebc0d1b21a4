"""FHIR Bulk Data export (Bulk Data Access IG v2, ``$export`` as NDJSON) of a care team or of the caller's
patients: the job table (:mod:`.jobs`), the SQL that streams rows (:mod:`.queries`), the export that writes
one file per resource type (:mod:`.export`) and the worker thread that runs it inside the API process
(:mod:`.worker`). The HTTP routes are ``cloud/api/routes/fhir_bulk.py``.

Resources come from ``cloud.twin.fhir`` (the same builders as ``Patient/$everything``); which patients and
which of their data a job may export is decided at kick-off from the caller's consents exactly as the API
decides each request (readings: Patient, Device, Observation; alerts: Flag), and checked again when the
job starts, so a consent revoked in between also leaves that patient out.
"""

from __future__ import annotations

from cloud.errors import CloudError

RESOURCE_TYPES = ("Patient", "Device", "Observation", "Flag", "Consent")
"""What an export can hold, in the manifest's order. ``Consent`` is the patient's own (as ``/fhir/Consent``):
only a patient's export of their own record has it."""


class BulkExportError(CloudError):
    """Base of the bulk export's errors."""


class JobLost(BulkExportError):
    """The job is no longer this worker's: cancelled, or taken over after this worker's lease lapsed."""


class ExportStopped(BulkExportError):
    """The worker is shutting down: the job is given back, not failed."""
