"""The digital twin: one versioned record per patient, an append-only event history, FHIR R4 mapping.

``service`` is the Python API, ``new_readings`` folds newly stored readings in (called by
``cloud.effects`` in ingest's transaction), ``state`` is the pure fold of events into state (so a
replay rebuilds it), ``baselines`` the patient's own robust statistics, ``fhir`` the FHIR R4
resources. The twin imports the storage layer only (``cloud.db``), never the alerts.
"""
