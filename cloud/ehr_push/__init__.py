"""Push to an EHR (issue 22 item 3): PHD transaction Bundles sent to one configured FHIR endpoint.

- :mod:`.config` checks the ``RPM_EHR_PUSH_*`` settings as a whole (push is off unless they are set) and loads
  the signing key.
- :mod:`.smart` is the SMART Backend Services client: a ``client_credentials`` grant with a signed
  ``client_assertion`` (RS384 or ES384), the access token cached until shortly before it expires.
- :mod:`.queries` holds the SQL of migration 0640's tables: the watermark over ``readings``, the outbox and
  the batches.
- :mod:`.bundle` builds one transaction Bundle per batch from the same builders as the FHIR API and the bulk
  export (``cloud.twin.fhir``): Patient, measuring and gateway Devices, Observations, each a conditional
  create (``request.ifNoneExist`` on its identifier), references between them as ``urn:uuid`` fullUrls.
- :mod:`.worker` claims, builds, sends, retries and records (``rpm-cloud ehr-push``).

Who is pushed: patients whose consent with the ``readings`` scope to one of ``RPM_EHR_PUSH_CARE_TEAMS`` is in
force, by the API's own definition of a consent in force. The EHR is the record system of those care teams;
the patient's consent to the team seeing their readings is what lets the readings into the team's record.
Consent is checked when a reading is queued and again when its batch is built.
"""

from __future__ import annotations

from cloud.errors import CloudError


class EhrPushError(CloudError):
    """Base of the EHR push's errors."""


class PushConfigError(EhrPushError):
    """The ``RPM_EHR_PUSH_*`` settings are missing or wrong (the message names every problem)."""


class TokenError(EhrPushError):
    """The token endpoint refused the client or answered something that is not a token."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
