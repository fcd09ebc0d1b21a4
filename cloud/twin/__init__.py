"""The digital twin: one versioned record per patient, an append-only event history, FHIR R4 mapping.

``service`` is the Python API, ``hook`` runs in ingest's transaction, ``state`` is the pure fold of
events into state (so a replay rebuilds it), ``baselines`` the patient's own robust statistics,
``fhir`` the FHIR R4 resources.
"""
