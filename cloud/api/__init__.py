"""The clinician HTTP API (FastAPI): ``app.create_app``, ``server`` (``rpm-cloud api``), ``tokens``
(``rpm-cloud token``), ``deps`` (database, caller, authorisation), one router per resource in ``routes``."""
