"""Logs of every cloud process: one line per event with an ISO-8601 UTC timestamp, the level, the
process (a command, or an ingest worker's client id) with its pid, and the logger.

``RPM_LOG_FORMAT=plain`` (the default) writes text::

    2025-01-31T09:12:03.123Z INFO    ingest-host-0-0[4242] cloud.ingest.service: ingest-host-0-0: consuming ...

``RPM_LOG_FORMAT=json`` writes one JSON object per line (python-json-logger) with ``ts``, ``level``,
``process_name``, ``pid``, ``logger``, ``msg`` and any ``extra={...}`` fields, for a log shipper.
``RPM_LOG_LEVEL`` sets the level. The same configuration is handed to uvicorn (:func:`logging_config`),
so the API's access and error logs come out the same way, in every worker process.
"""

from __future__ import annotations

import logging
import logging.config
import sys
import time
from typing import Any, TextIO

from cloud.settings import CloudSettings

PLAIN_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(process_name)s[%(process)d] %(name)s: %(message)s"
ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"


class UtcFormatter(logging.Formatter):
    """``%(asctime)s`` in UTC (the stdlib formats local time)."""

    converter = time.gmtime


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is when a record comes, not as it was at set-up (a CLI run
    in-process, e.g. by a test, may have it replaced and restored in between)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        return


def logging_config(
    process: str, *, default_level: str = "INFO", settings: CloudSettings | None = None
) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary for a cloud process named ``process``."""
    settings = settings or CloudSettings()  # not get_settings(): nothing cached as a side effect
    level = settings.log_level or default_level
    if settings.log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": "%(levelname)s %(process)d %(name)s %(message)s",
            "rename_fields": {"levelname": "level", "process": "pid", "name": "logger", "message": "msg"},
            "static_fields": {"process_name": process},
            "timestamp": "ts",
        }
    else:
        formatter = {
            "()": UtcFormatter,
            "fmt": PLAIN_FORMAT,
            "datefmt": ISO_SECONDS,
            "defaults": {"process_name": process},
        }
    return {
        "version": 1,
        # Module loggers made at import time (before this runs) must keep logging.
        "disable_existing_loggers": False,
        "formatters": {"rpm": formatter},
        "handlers": {"stderr": {"()": StderrHandler, "formatter": "rpm"}},
        "root": {"level": level, "handlers": ["stderr"]},
        "loggers": {
            # paho logs every packet at DEBUG: warnings only, unless the whole process is at DEBUG.
            "paho": {"level": "DEBUG" if level == "DEBUG" else "WARNING"},
            # uvicorn's loggers hand their records to the root handler instead of their own.
            **{name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
        },
    }


def configure_logging(process: str, *, default_level: str = "INFO", settings: CloudSettings | None = None) -> None:
    """Set up this process's logging (again, if it was: the previous handlers are replaced)."""
    logging.config.dictConfig(logging_config(process, default_level=default_level, settings=settings))
