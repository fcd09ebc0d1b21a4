"""The cloud's exceptions: one root, :class:`CloudError`, that every error the cloud defines derives from.

Each boundary translates them once: ingest turns a failure with one message into a dead letter, the
API answers problem+json (``cloud.api.problems``), and ``rpm-cloud`` turns one a command leaves
unhandled into one line on stderr. The families, each defined where it is raised:

- ingest: ``cloud.ingest.consumer.IngestError`` (and ``WorkerFailed``);
- stored rows: ``cloud.db.readings.StoredReadingError``;
- alerts: ``cloud.alerts.AlertsError`` (``AlertNotFound``, ``RuleNotFound``, ``InvalidOverride``,
  ``AlertStateError``);
- the twin: ``cloud.twin.service.TwinError`` (``PatientNotFound``), ``cloud.twin.state.UnknownTwinEvent``;
- devices: ``cloud.devices.assignment.AssignmentError``, ``cloud.devices.binding.BindingError``;
- the API: ``cloud.api.tokens.TokenError``, ``cloud.api.problems.ApiProblem`` and ``BodyTooLarge``;
- the one-command demo: ``cloud.embedded.EmbeddedServiceError``, ``cloud.demo.run.DemoStop``.

Stdlib only, so every layer (``cloud/db`` included) may import it. An error that was a ``ValueError``
or ``RuntimeError`` stays one as well, for the callers that catch those.
"""

from __future__ import annotations


class CloudError(Exception):
    """Base of every error the cloud defines."""
